"""The trainer and the contract agree on every default and bound because they are the same objects.

The worker's config (`kubetrain_trainer.config`, torch-free) holds the `kubetrain.api` models
themselves, resolved by `kubetrain.api.deepspeed.resolve`; the trainer writes no default and no
bound of its own. Every numeric bound and every choice of every spec field is refused by the
trainer with exactly the line `kubetrain validate` gives (the same function produces it), and the
defaults are those of the models and of `KUBETRAIN_DEFAULTS`.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import annotated_types
import pytest
from pydantic import BaseModel

from kubetrain import api
from kubetrain.api import validate
from kubetrain.api.constants import API_VERSION, KIND
from kubetrain.api.deepspeed import KUBETRAIN_DEFAULTS, resolve
from kubetrain_trainer import config
from kubetrain_trainer.errors import SpecError

TRAINER = Path(config.__file__).resolve().parent

SECTIONS = {  # JobConfig attribute -> (spec attribute, api model)
    "workers": ("workers", api.WorkersSpec),
    "model": ("model", api.ModelSpec),
    "data": ("data", api.DataSpec),
    "training": ("training", api.TrainingSpec),
    "parallel": ("parallelism", api.ParallelismSpec),
    "precision": ("precision", api.PrecisionSpec),
    "optimizer": ("optimizer", api.OptimizerSpec),
    "schedule": ("lr_schedule", api.LRScheduleSpec),
    "checkpoint": ("checkpoint", api.CheckpointSpec),
    "elastic": ("elastic", api.ElasticSpec),
}

RICH = {
    "training": {"maxSteps": 7, "globalBatchSize": 12, "microBatchSize": 3},
    "parallelism": {"sync": {"mode": "diloco", "diloco": {"syncEvery": 3}}},
    "precision": {"dtype": "fp16"},
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "checkpoint": {"storage": {"claimName": "c"}, "initFrom": {"path": "/x"}},
}


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "kubetrain"}, "spec": spec}


# ------------------------------------------------------------------------------ the same objects


def test_the_sections_are_the_api_models() -> None:
    cfg = config.from_spec(RICH)
    assert isinstance(cfg.spec, api.TrainingJobSpec)
    for attr, (spec_attr, model) in SECTIONS.items():
        section = getattr(cfg, attr)
        assert type(section) is model, attr
        assert section is getattr(cfg.spec, spec_attr), attr
    assert type(cfg.sync) is api.SyncSpec and cfg.sync is cfg.spec.parallelism.sync
    # The only state of JobConfig: a name, the resolved spec and the size it was resolved for.
    assert [f.name for f in dataclasses.fields(config.JobConfig)] == ["name", "spec", "world_size"]


def test_defaults_are_the_models_and_the_defaults_table() -> None:
    cfg = config.from_spec({})
    assert cfg.spec == resolve(api.TrainingJobSpec())  # nothing added, nothing changed by the trainer
    # Fields whose model default is set: the trainer sees exactly that default.
    for attr, (_, model) in SECTIONS.items():
        section = getattr(cfg, attr)
        for name, field in model.model_fields.items():
            if not field.is_required() and field.get_default(call_default_factory=True) is not None:
                assert getattr(section, name) == field.get_default(call_default_factory=True), f"{attr}.{name}"
    # Fields the models leave to DeepSpeed (default None): Kubetrain's table, one copy.
    table = KUBETRAIN_DEFAULTS
    assert cfg.global_batch_size == table["globalBatchSize"]
    assert cfg.gradient_clipping == table["gradientClipping"]
    assert cfg.dtype == table["precision.dtype"]
    assert cfg.strategy == table["parallelism.strategy"]
    assert cfg.schedule_type == table["lrSchedule.type"]
    for key, value in table.items():
        if key.startswith("optimizer."):
            wire = key.split(".", 1)[1]
            name = "".join("_" + c.lower() if c.isupper() else c for c in wire)
            assert getattr(cfg.optimizer, name) == value, key


def test_the_trainer_writes_no_default() -> None:
    """No lr / seed / epsilon literal anywhere in the trainer, and no importlib door into kubetrain."""
    distinctive = {KUBETRAIN_DEFAULTS["optimizer.lr"], api.TrainingSpec.model_fields["seed"].default}
    for path in TRAINER.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in distinctive:
                pytest.fail(f"{path.relative_to(TRAINER)}:{node.lineno}: literal {node.value!r} duplicates a default")
    source = Path(config.__file__).read_text()
    assert "importlib" not in source


def test_the_trainer_names_no_environment_variable_itself() -> None:
    """`KUBETRAIN_*` names come from kubetrain.api.constants (the operator sets them from there)."""
    for path in TRAINER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.fullmatch(r"KUBETRAIN_[A-Z0-9_]+", node.value), (
                    f"{path.relative_to(TRAINER)}:{node.lineno}: {node.value!r}: use kubetrain.api.constants")


# ------------------------------------------------------------------------------ every bound


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _literals(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is typing.Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) for v in _literals(arg))


def _is_float(annotation: Any) -> bool:
    return annotation is float or float in get_args(annotation)


def _outside(bound: Any, is_float: bool) -> Any:
    """A value just outside one annotated_types bound."""
    step = 0.5 if is_float else 1
    if isinstance(bound, annotated_types.Ge):
        return bound.ge - step
    if isinstance(bound, annotated_types.Gt):
        return bound.gt
    if isinstance(bound, annotated_types.Le):
        return bound.le + step
    if isinstance(bound, annotated_types.Lt):
        return bound.lt
    return None


def _violations(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(wire path, bad value) for every numeric bound and every Literal choice under `model`."""
    for name, field in model.model_fields.items():
        wire = (*path, field.alias or name)
        sub = _model_in(field.annotation)
        if sub is not None:
            yield from _violations(sub, wire)
            continue
        for bound in field.metadata:
            bad = _outside(bound, _is_float(field.annotation))
            if bad is not None:
                yield wire, bad
        if _literals(field.annotation):
            yield wire, "no-such-choice"


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return dict(out)


VIOLATIONS = list(_violations(api.TrainingJobSpec, ()))


def test_the_walk_finds_the_bounds_of_the_issue() -> None:
    assert (("training", "maxSteps"), 0) in VIOLATIONS
    assert (("model", "dModel"), 7) in VIOLATIONS
    assert len(VIOLATIONS) > 60


@pytest.mark.parametrize(("path", "bad"), VIOLATIONS, ids=[".".join(p) + f"={b}" for p, b in VIOLATIONS])
def test_every_bound_is_refused_with_the_validators_line(path: tuple[str, ...], bad: Any) -> None:
    spec = _nest(path, bad)
    problems = validate.model_problems(_job(spec))
    assert any(p.path == "spec." + ".".join(path) for p in problems), problems
    with pytest.raises(SpecError) as err:
        config.from_spec(spec)
    assert str(err.value) == "invalid spec: " + "; ".join(str(p) for p in problems)
    assert err.value.exit_code == 64


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"training": {"maxSteps": 0}}, "spec.training.maxSteps: must be >= 1 (got 0); fix: set a value >= 1"),
        ({"model": {"dModel": 1}}, "spec.model.dModel: must be >= 8 (got 1); fix: set a value >= 8"),
    ],
)
def test_max_steps_0_and_d_model_1_are_refused_in_one_place(spec: dict[str, Any], line: str) -> None:
    """Once accepted by the trainer's own reader: now the launcher (`validate_object`), `kubetrain
    validate` and the worker refuse them with the same line, from the same models."""
    assert [str(p) for p in validate.validate_object(_job(spec))] == [line]
    with pytest.raises(SpecError) as err:
        config.from_spec(spec)
    assert str(err.value) == f"invalid spec: {line}"


def test_semantic_checks_are_the_validators() -> None:
    """Beyond single fields, the worker runs `validate.SEMANTIC_CHECKS` (what the operator runs too)."""
    spec = {"model": {"dModel": 66, "nHeads": 4}}
    problems = [p for check in validate.SEMANTIC_CHECKS
                for p in check(api.TrainingJobSpec.model_validate(spec), spec)]
    assert [p.path for p in problems] == ["spec.model.dModel"] and "divisible by nHeads" in problems[0].message
    # `kubetrain validate` refuses it already by the CRD's CEL rule, at the same field
    assert [p.path for p in validate.validate_object(_job(spec))] == ["spec.model.dModel"]
    with pytest.raises(SpecError) as err:
        config.from_spec(spec)
    assert str(err.value) == "invalid spec: " + "; ".join(str(p) for p in problems)
