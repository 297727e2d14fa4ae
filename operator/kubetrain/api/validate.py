"""Offline validation of TrainingJob objects: the models, then the CRD's own CEL rules.

The CEL rules are read from the generated CRD schema and evaluated with cel-python, so
`kubetrain validate` and the API server judge by the very same expressions.

`admission_problems` is what the API server decides (metadata, the structural schema with its
types and bounds, the CEL rules); `validate_object` adds the checks that need resolved values
(`SEMANTIC_CHECKS`), which the operator and the trainer's startup run too. Neither raises: any
object, however malformed, gets one line per problem.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from kubetrain import api
from kubetrain.api import deepspeed
from kubetrain.api.combinations import combination_problems
from kubetrain.api.constants import API_VERSION, KIND
from kubetrain.api.crd import crd_schema
from kubetrain.api.objectmeta import metadata_problems
from kubetrain.api.pipeline import pp_problems
from kubetrain.api.problems import Problem, SpecError
from kubetrain.api.tensorparallel import tp_problems

if TYPE_CHECKING:
    import celpy

# Checks beyond the schema, in order: spec -> problems. An explicit list (nothing registers itself).
SemanticCheck = Callable[[api.TrainingJobSpec, dict[str, Any]], list[Problem]]
SEMANTIC_CHECKS: tuple[SemanticCheck, ...] = (
    deepspeed.deepspeed_problems, combination_problems, tp_problems, pp_problems,
)

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


def _short(value: Any, limit: int = 60) -> str:
    """repr() of a value cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(document)"


def _not_finite(path: str) -> Problem:
    return Problem(path, "is not a finite number", "JSON (and so the API server) has no NaN or Infinity: "
                   "write a finite number")


def _describe(err: Any, root: type[BaseModel]) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in {"int", "str", "function-after"}))
    path = _path(loc)
    kind, ctx, raw = err["type"], err.get("ctx", {}), err.get("input")
    value = _Short(raw)
    if kind == "finite_number":
        return _not_finite(path)
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
    if kind in {"string_too_short", "string_too_long"}:
        if kind == "string_too_long":
            return Problem(path, f"at most {ctx.get('max_length')} characters allowed (got {len(raw)})", "shorten it")
        return Problem(path, f"at least {ctx.get('min_length')} characters needed", "write a longer value")
    if kind in {"too_short", "too_long"}:
        unit = "keys" if ctx.get("field_type") == "Dictionary" else "items"
        if kind == "too_long":
            return Problem(path, f"at most {ctx.get('max_length')} {unit} allowed (got more)", "remove some")
        return Problem(path, f"at least {ctx.get('min_length')} {unit} needed", "add the missing ones")
    if kind == "string_pattern_mismatch":
        hint = 'use "pkg.module:function"' if path.endswith("entrypoint") else f"match {ctx.get('pattern')}"
        return Problem(path, f"{value!r} has the wrong format", hint)
    if kind.endswith(("_type", "_parsing")):
        want = kind.split("_")[0].replace("dict", "object").replace("model", "object")
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
                "list": "a list", "object": "an object"}.get(want, want)
        return Problem(path, f"must be {want} (got {value!r})", f"write {want}")
    return Problem(path, err["msg"], "")


class _Short:
    """Formats as a short repr() in the f-strings above (a 1 MB string prints as 60 characters)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return _short(self.value)


def model_problems(obj: dict[str, Any]) -> list[Problem]:
    """The models' verdict (types, bounds, unknown fields); metadata is metadata_problems' job."""
    try:
        api.TrainingJob.model_validate(obj)
    except ValidationError as exc:
        return [_describe(e, api.TrainingJob) for e in exc.errors() if e["loc"][:1] != ("metadata",)]
    return []


_INT64 = (-(2**63), 2**63 - 1)


def non_finite_problems(value: Any, path: str = "") -> list[Problem]:
    """NaN and infinities anywhere (free-form fields included): kubectl cannot even send them; and
    integers beyond int64, which no API server field holds (the file reader already turned those
    into floats, as the API server does; this catches objects built in Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [_not_finite(path or "(document)")]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return [Problem(path or "(document)", "is beyond the 64-bit integer range", "write a smaller number")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_problems(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite_problems(v, f"{path}[{i}]")]
    return []


# ------------------------------------------------------------------------------ CEL rules


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return crd_schema()


@functools.lru_cache(maxsize=1)
def _cel_env() -> celpy.Environment:
    # Imported here: cel-python (with lark and pendulum, ~6 MiB) serves `kubetrain validate` and
    # admission checks, never the operator, whose passes leave the CEL rules to the API server.
    import celpy

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


def prune_nulls(schema: dict[str, Any], value: Any) -> Any:
    """`value` as the API server validates it: null dropped from the schema's declared fields."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: prune_nulls(props.get(k, {}), v) for k, v in value.items() if not (v is None and k in props)}
    if isinstance(value, list) and "items" in schema:
        return [prune_nulls(schema["items"], v) for v in value]
    return value


def cel_problems(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Problem]:
    """Evaluate the CRD's CEL rules against `obj` (and `old` for transition rules)."""
    from celpy import json_to_cel

    problems = []
    obj = prune_nulls(_schema(), obj)
    old = prune_nulls(_schema(), old) if old is not None else None
    for path, rule, value, old_value in _walk(_schema(), obj, old, ""):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old_value is None:
            continue  # transition rules only run on updates where the old value exists
        try:
            activation = {"self": json_to_cel(value)}
            if uses_old:
                activation["oldSelf"] = json_to_cel(old_value)
            ok = bool(_program(rule["rule"]).evaluate(activation))
        except Exception:  # a value of the wrong type or range: the schema check reports it
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
        problems.append(Problem("apiVersion", f"{_short(obj.get('apiVersion'))} is not {API_VERSION!r}",
                                f"set apiVersion: {API_VERSION}"))
    if obj.get("kind") != KIND:
        problems.append(Problem("kind", f"{_short(obj.get('kind'))} is not {KIND!r}", f"set kind: {KIND}"))
    return problems


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    unique = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return unique


def admission_problems(obj: Any, old: dict[str, Any] | None = None) -> list[Problem]:
    """What the API server refuses of `obj` (with the CRD installed): metadata, the structural
    schema's types and bounds, unknown fields (strict field validation), the CEL rules."""
    problems = _header_problems(obj)
    if problems:
        return problems
    problems = metadata_problems(obj) + non_finite_problems(obj) + model_problems(obj)
    # a field that already has a problem is not reported again by a rule about it (nor the name,
    # which metadata_problems reports in the root rule's words)
    typed = {p.path for p in problems} | {p.message for p in problems}
    problems += [p for p in cel_problems(obj, old) if p.path not in typed and p.message not in typed]
    return _unique(problems)


def validate_object(obj: Any, old: dict[str, Any] | None = None) -> list[Problem]:
    """All problems of one TrainingJob object (empty when valid): admission_problems, then the
    checks that need resolved values. Never raises."""
    try:
        problems = admission_problems(obj, old)
    except Exception as exc:  # a bug, not a verdict: say so in one line instead of a traceback
        return [Problem("(document)", f"internal error while validating: {type(exc).__name__}: {exc}",
                        "please report it with the file")]
    if problems:
        return problems
    spec = api.TrainingJob.model_validate(obj).spec
    for check in SEMANTIC_CHECKS:
        try:
            problems += check(spec, obj.get("spec") or {})
        except Exception as exc:
            problems.append(Problem("spec", f"internal error in {getattr(check, '__name__', check)}: "
                                    f"{type(exc).__name__}: {exc}", "please report it with the file"))
    return _unique(problems)


def parse_spec(obj: dict[str, Any]) -> api.TrainingJob:
    """Validate and return the model, or raise SpecError listing every problem."""
    problems = validate_object(obj)
    if problems:
        raise SpecError(problems)
    return api.TrainingJob.model_validate(obj)
