"""Small value helpers shared by the DeepSpeed block modules: formatting, normalising, comparing."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kubetrain import api
from kubetrain.api.problems import Problem


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


# YAML 1.2 / go-yaml numbers that PyYAML (YAML 1.1) leaves as strings, e.g. 3e-4 or 1.0e5.
# The API server (sigs.k8s.io/yaml) stores them as numbers, so `validate` must read them so too.
_YAML12_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$")


def normalise(value: Any, path: str, auto: list[str]) -> Any:
    """Drop "auto" values (recording their paths) and read exponent strings as numbers."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}"
            if isinstance(v, str) and v == "auto":
                auto.append(sub)
                continue
            out[str(k)] = normalise(v, sub, auto)
        return out
    if isinstance(value, list):
        return [normalise(v, path, auto) for v in value]
    if isinstance(value, str) and _YAML12_FLOAT.match(value):
        return float(value)
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def suggest(name: str, options: Iterable[str]) -> str:
    options = list(options)
    same_but_case = [o for o in options if o.lower() == name.lower()]
    near = same_but_case or difflib.get_close_matches(name, options, n=1)
    return f"did you mean '{near[0]}'?" if near else ""


def nominal_world_size(spec: api.TrainingJobSpec) -> int:
    """The job's data-parallel size at its nominal replicas: DeepSpeed's "world size" in the batch
    rule (train = micro x accumulation x data-parallel size); the tensorParallel and pipelineParallel
    ranks of one replica share samples."""
    return max(1, spec.workers.replicas * spec.workers.procs // spec.parallelism.model_parallel)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out

