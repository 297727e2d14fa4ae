"""Combinations checked on resolved values: a semantic check of `kubetrain validate`.

A strategy given only by `spec.deepspeed.zero_optimization` exists only after the DeepSpeed
mapping, where the CRD's CEL rule on `parallelism.sync.mode` cannot see it. The operator and the
trainer's worker run the semantic checks (`kubetrain.api.validate.SEMANTIC_CHECKS`) but not the
CEL rules (the API server and the launcher's preflight enforced those), so the two rules a worker
cannot survive without -- attention heads that split dModel, a sync mode that replicates the
model -- are also evaluated here, on the resolved values (with the sizes in the message). Where
both run, a spec gets one line: `validate_object` runs the semantic checks only after the CEL
rules passed.
"""

from __future__ import annotations

from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed import analyse
from kubetrain.api.modelsize import model_shape
from kubetrain.api.problems import Problem

REPLICATING_SYNC_MODES = ("localSGD", "diloco", "powerSGD")


def _as_problem(rules: tuple[api.CelRule, ...], field_path: str, path: str) -> Problem:
    """A CEL rule's own words."""
    rule = next(r for r in rules if r.field_path == field_path)
    what, _, fix = rule.message.partition(": ")
    return Problem(path, what, fix)


def combination_problems(spec: api.TrainingJobSpec, raw_spec: dict[str, Any]) -> list[Problem]:
    """dModel divisible by nHeads (after the preset); a replicating sync mode with the resolved strategy."""
    del raw_spec
    problems: list[Problem] = []
    model = spec.model
    if model.entrypoint is None:
        shape = model_shape(model)
        if shape.d_model % shape.n_heads:
            problems.append(Problem(
                "spec.model.dModel",
                f"dModel ({shape.d_model}) must be divisible by nHeads ({shape.n_heads}; sizes not given are the "
                f"preset's)", "choose dModel a multiple of nHeads",
            ))
    sync = spec.parallelism.sync or api.SyncSpec()
    if sync.mode in REPLICATING_SYNC_MODES:
        resolution = analyse(spec)  # DeepSpeed's zero_optimization may set the strategy
        strategy = resolution.spec.parallelism.strategy
        if not resolution.problems and strategy not in (None, "ddp"):
            problems.append(_as_problem(api.ParallelismSpec.cel_rules, ".sync.mode", "spec.parallelism.sync.mode"))
    return problems
