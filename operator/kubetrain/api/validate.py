"""Offline validation of TrainingJob objects: the models, then the CRD's own CEL rules.

The CEL rules are read from the generated CRD schema and evaluated with cel-python, so
`kubetrain validate` and the API server judge by the very same expressions.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import celpy
from pydantic import BaseModel, ValidationError

from kubetrain import api
from kubetrain.api import deepspeed
from kubetrain.api.constants import API_VERSION, KIND
from kubetrain.api.crd import crd_schema
from kubetrain.api.problems import Problem, SpecError

# Checks beyond the schema, in order: spec -> problems. An explicit list (nothing registers itself).
SemanticCheck = Callable[[api.TrainingJobSpec, dict[str, Any]], list[Problem]]
SEMANTIC_CHECKS: tuple[SemanticCheck, ...] = (deepspeed.deepspeed_problems,)

# Non-fatal remarks shown by `kubetrain validate` (e.g. unsupported DeepSpeed keys).
NOTE_PROVIDERS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (deepspeed.note_provider,)


# ------------------------------------------------------------------------- pydantic errors


def _aliases_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid wire names of the object at `loc` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        match = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if match is None:
            return []
        current = _model_in(match.annotation)
    fields = getattr(current, "model_fields", None) or {}
    return [f.alias or n for n, f in fields.items()]


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(err: Any, root: type[BaseModel]) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in {"int", "str", "function-after"}))
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(document)"
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        name = str(loc[-1])
        near = difflib.get_close_matches(name, _aliases_at(root, loc[:-1]), n=1)
        fix = f"did you mean '{near[0]}'?" if near else "remove it (see `kubetrain crd` for the fields)"
        return Problem(path, f"unknown field '{name}'", fix)
    if kind == "missing":
        return Problem(path, "is required", "add it")
    if kind in {"literal_error", "enum"}:
        return Problem(path, f"{value!r} is not allowed", f"use one of {ctx.get('expected', '')}")
    bounds = {
        "greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"), "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return Problem(path, f"must be {op} {ctx.get(key)} (got {value!r})", f"set a value {op} {ctx.get(key)}")
    if kind in {"too_short", "too_long"}:
        return Problem(path, err["msg"].replace("List", "list").replace("Value", "value"), "change its length")
    if kind == "string_pattern_mismatch":
        hint = 'use "pkg.module:function"' if path.endswith("entrypoint") else f"match {ctx.get('pattern')}"
        return Problem(path, f"{value!r} has the wrong format", hint)
    if kind.endswith(("_type", "_parsing")):
        want = kind.split("_")[0].replace("dict", "object").replace("model", "object")
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
                "list": "a list", "object": "an object"}.get(want, want)
        return Problem(path, f"must be {want} (got {value!r})", f"write {want}")
    return Problem(path, err["msg"], "")


def model_problems(obj: dict[str, Any]) -> list[Problem]:
    try:
        api.TrainingJob.model_validate(obj)
    except ValidationError as exc:
        return [_describe(e, api.TrainingJob) for e in exc.errors()]
    return []


# ------------------------------------------------------------------------------ CEL rules


@functools.lru_cache(maxsize=1)
def _cel_env() -> celpy.Environment:
    return celpy.Environment()


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    env = _cel_env()
    return env.program(env.compile(rule))


def _walk(schema: dict[str, Any], value: Any, old: Any, path: str) -> Iterable[tuple[str, dict[str, Any], Any, Any]]:
    """Yield (path, rule, self, oldSelf) for every CEL rule that applies to `value`."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value, old
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                yield from _walk(sub, value[name], sub_old, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, None, f"{path}[{i}]")


def cel_problems(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Problem]:
    """Evaluate the CRD's CEL rules against `obj` (and `old` for transition rules)."""
    problems = []
    for path, rule, value, old_value in _walk(crd_schema(), obj, old, ""):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old_value is None:
            continue  # transition rules only run on updates where the old value exists
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old_value)
        try:
            ok = bool(_program(rule["rule"]).evaluate(activation))
        except Exception:  # a type error here means the schema check already reported it
            continue
        if not ok:
            field = (path + rule.get("fieldPath", "")).lstrip(".")
            what, _, fix = rule["message"].partition(": ")
            problems.append(Problem(field, what, fix))
    return problems


# ------------------------------------------------------------------------------ entry points


def _header_problems(obj: Any) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem("(document)", f"must be a TrainingJob object, got {type(obj).__name__}",
                        f"start the file with 'apiVersion: {API_VERSION}' and 'kind: {KIND}'")]
    problems = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"{obj.get('apiVersion')!r} is not {API_VERSION!r}",
                                f"set apiVersion: {API_VERSION}"))
    if obj.get("kind") != KIND:
        problems.append(Problem("kind", f"{obj.get('kind')!r} is not {KIND!r}", f"set kind: {KIND}"))
    return problems


def validate_object(obj: Any, old: dict[str, Any] | None = None) -> list[Problem]:
    """All problems of one TrainingJob object (empty when valid)."""
    problems = _header_problems(obj)
    if problems:
        return problems
    problems = model_problems(obj) + cel_problems(obj, old)
    if not problems:
        spec = api.TrainingJob.model_validate(obj).spec
        for check in SEMANTIC_CHECKS:
            problems += check(spec, obj.get("spec") or {})
    seen: set[str] = set()
    unique = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return unique


def parse_spec(obj: dict[str, Any]) -> api.TrainingJob:
    """Validate and return the model, or raise SpecError listing every problem."""
    problems = validate_object(obj)
    if problems:
        raise SpecError(problems)
    return api.TrainingJob.model_validate(obj)
