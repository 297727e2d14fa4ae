"""The state one mapping pass shares across the DeepSpeed blocks, and its generic readers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.keys import BATCH_KEYS, DS
from kubetrain.api.deepspeed.values import (
    fmt,
    is_int,
    is_number,
    nominal_world_size,
    normalise,
    same,
    suggest,
)
from kubetrain.api.problems import Problem


class DeepSpeedConfigError(ValueError):
    """A spec whose DeepSpeed mapping fails; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class Resolution:
    """Everything `resolve` works out, without raising."""

    spec: api.TrainingJobSpec  # the resolved spec (valid only when `problems` is empty)
    world_size: int  # the world size the batch rule was applied at
    nominal: bool  # True when that is workers.replicas x procs (no world_size given)
    gradient_accumulation_steps: int | None  # at that world size; None when unknown
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    auto: list[str] = field(default_factory=list)  # dotted DeepSpeed keys written as "auto"


class Context:
    def __init__(self, spec: api.TrainingJobSpec, world_size: int | None) -> None:
        self.spec = spec
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.auto: list[str] = []
        raw = spec.deepspeed or {}
        self.ds: dict[str, Any] = normalise(raw, DS, self.auto) if isinstance(raw, Mapping) else {}
        self.nominal = world_size is None
        self.world = nominal_world_size(spec) if world_size is None else world_size
        prefix = f"{DS}."
        self.auto_keys = {p[len(prefix):] for p in self.auto if p.startswith(prefix)}

    def is_auto(self, key: str) -> bool:
        """Was the dotted DeepSpeed key written as "auto" (the Hugging Face placeholder)?"""
        return key in self.auto_keys

    # -- generic ---------------------------------------------------------------------

    def problem(self, path: str, message: str, fix: str) -> None:
        self.problems.append(Problem(path, message, fix))

    def section(self, key: str) -> dict[str, Any] | None:
        value = self.ds.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(f"{DS}.{key}", f"must be an object (got {fmt(value)})", f"write {key}: {{...}}")
            return None
        return dict(value)

    def pick(self, typed_path: str, typed: Any, ds_path: str, ds_value: Any, *, why: str = "",
             shown: Any = None) -> Any:
        """Typed value, else DeepSpeed value; both given and different is a contradiction.
        `shown` is the DeepSpeed value as written, when it differs from what it means."""
        if typed is not None and ds_value is not None and not same(typed, ds_value):
            self.problem(
                typed_path,
                f"{typed_path}={fmt(typed)} contradicts {ds_path}={fmt(ds_value if shown is None else shown)}{why}",
                "remove one of them or make them equal",
            )
        return typed if typed is not None else ds_value

    def check_keys(self, key: str, section: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for name in section:
            if name not in allowed:
                hint = suggest(name, allowed)
                self.problem(
                    f"{DS}.{key}.{name}",
                    f"unknown key '{name}' (DeepSpeed rejects it: {key} takes {', '.join(sorted(allowed))})",
                    hint or "remove it",
                )

    def number(self, path: str, value: Any, *, ge: float | None = None, gt: float | None = None,
               lt: float | None = None) -> float | None:
        if value is None:
            return None
        if not is_number(value):
            self.problem(path, f"must be a number (got {fmt(value)})", "write a number")
            return None
        for ok, op, bound in ((ge is None or value >= ge, ">=", ge), (gt is None or value > gt, ">", gt),
                              (lt is None or value < lt, "<", lt)):
            if not ok:
                self.problem(path, f"must be {op} {bound} (got {fmt(value)})", f"set a value {op} {bound}")
                return None
        return float(value)

    def integer(self, path: str, value: Any, *, ge: int, le: int | None = None) -> int | None:
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer() and not path.endswith(BATCH_KEYS):
            value = int(value)  # pydantic (DeepSpeed's sections) accepts 16.0 for an int field
        if not is_int(value):
            self.problem(path, f"must be an integer (got {fmt(value)})", f"write a whole number >= {ge}")
            return None
        if value < ge or (le is not None and value > le):
            bounds = f"between {ge} and {le}" if le is not None else f">= {ge}"
            self.problem(path, f"must be {bounds} (got {value})", f"set a value {bounds}")
            return None
        return int(value)

    def boolean(self, path: str, value: Any) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false (got {fmt(value)})", "write true or false")
            return None
        return value
