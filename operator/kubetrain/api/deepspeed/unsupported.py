"""Keys Kubetrain accepts but ignores: found by name, each with a note."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from kubetrain.api.deepspeed.keys import (
    DS,
    GATHER_16BIT_KEYS,
    HANDLED_SECTIONS,
    HINTS,
    KNOWN_TOP,
    MAPPED_KEYS,
    MONITOR_KEYS,
    NO_OP_KEYS,
    REMOVED_TOP,
    REMOVED_ZERO,
)
from kubetrain.api.deepspeed.values import fmt, normalise, same

# Keys handled by their block (mapped, checked, or noted there), so never "unsupported".
HANDLED_ZERO = frozenset(
    {"offload_optimizer", "offload_param", "cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory",
     *GATHER_16BIT_KEYS, *REMOVED_ZERO}
)
HANDLED_TOP = HANDLED_SECTIONS | set(MONITOR_KEYS) | {"comms_logger"} | set(REMOVED_TOP)


def unsupported_note(key: str, value: Any = None) -> str:
    top = key.split(".", 1)[0]
    if key in NO_OP_KEYS:
        allowed = NO_OP_KEYS[key] or ()
        return (f"{DS}.{key}={fmt(value)} is not supported (only {' or '.join(fmt(v) for v in allowed)} is) and "
                "is ignored")
    extra = ""
    if top in HINTS:
        extra = f" ({HINTS[top]})"
    elif "." not in key:
        near = difflib.get_close_matches(key, [k for k in KNOWN_TOP if k != key], n=1, cutoff=0.8)
        extra = f" (did you mean '{near[0]}'?)" if near else ""
    return f"{DS}.{key} is not supported and is ignored{extra}"


def _supported(key: str, value: Any) -> bool:
    if key in MAPPED_KEYS:
        return True
    if key in NO_OP_KEYS:
        values = NO_OP_KEYS[key]
        return values is None or any(same(value, v) for v in values)
    return False


def unsupported_items(ds: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(dotted key, value) of the keys of a DeepSpeed config that Kubetrain ignores, in order."""
    if not isinstance(ds, Mapping):
        return []
    cfg = normalise(ds, DS, [])
    out: list[tuple[str, Any]] = []
    sections = {"optimizer", "scheduler", "fp16", "bf16", "bfloat16", "zero_optimization"}
    for key, value in cfg.items():
        if key in HANDLED_TOP:
            continue
        if key in sections and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if key == "optimizer" and sub == "params" and isinstance(sub_value, Mapping):
                    out += [(f"{dotted}.{p}", v) for p, v in sub_value.items() if not _supported(f"{dotted}.{p}", v)]
                elif (key == "optimizer" and sub in ("type", "params")) or (
                        key == "zero_optimization" and sub in HANDLED_ZERO):
                    continue
                elif not _supported(dotted, sub_value):
                    out.append((dotted, sub_value))
        elif not _supported(key, value) and key not in sections:
            out.append((key, value))
    return out


def unsupported_keys(ds: Mapping[str, Any]) -> list[str]:
    """Dotted names of the keys of a DeepSpeed config that Kubetrain ignores, in order."""
    return [k for k, _ in unsupported_items(ds)]
