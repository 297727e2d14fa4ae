"""Keys Kubetrain accepts but ignores: found by name, each with a note."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from kubetrain.api.deepspeed.keys import DS, HINTS, KNOWN_TOP, MAPPED_KEYS, NO_OP_KEYS
from kubetrain.api.deepspeed.values import normalise, same


def unsupported_note(key: str) -> str:
    top = key.split(".", 1)[0]
    extra = ""
    if "." not in key and top not in HINTS:
        near = difflib.get_close_matches(key, KNOWN_TOP, n=1, cutoff=0.8)
        extra = f" (did you mean '{near[0]}'?)" if near else ""
    elif top in HINTS:
        extra = f" ({HINTS[top]})"
    return f"{DS}.{key} is not supported and is ignored{extra}"



def unsupported_keys(ds: Mapping[str, Any]) -> list[str]:
    """Dotted names of the keys of a DeepSpeed config that Kubetrain ignores, in order."""
    if not isinstance(ds, Mapping):
        return []
    cfg = normalise(ds, DS, [])
    out: list[str] = []

    def supported(key: str, value: Any) -> bool:
        if key in MAPPED_KEYS:
            return True
        if key in NO_OP_KEYS:
            values = NO_OP_KEYS[key]
            return values is None or any(same(value, v) for v in values)
        return False

    sections = {"optimizer", "scheduler", "fp16", "bf16", "bfloat16", "zero_optimization"}
    for key, value in cfg.items():
        if key in sections and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if key == "optimizer" and sub == "params" and isinstance(sub_value, Mapping):
                    out += [f"{dotted}.{p}" for p, v in sub_value.items() if not supported(f"{dotted}.{p}", v)]
                elif key == "optimizer" and sub in ("type", "params"):
                    continue
                elif not supported(dotted, sub_value):
                    out.append(dotted)
        elif not supported(key, value) and key not in sections:
            out.append(key)
    return out

