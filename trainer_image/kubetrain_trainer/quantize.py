"""Symmetric per-output-channel int8 weights, as ``kubetrain export --dtype int8`` writes them and
``checkpoint.initFrom`` of such a file reads them back (the formula is in ``export``'s docstring)."""

from __future__ import annotations

import torch

SCALE_SUFFIX = "_scale"


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q int8 like w, scale float32 [rows])."""
    rows = w.float().reshape(w.shape[0], -1)
    scale = (rows.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape).contiguous(), scale.contiguous()


def dequantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An int8 export back to float32 weights (keys without the ``_scale`` entries)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in tensors:
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None and t.dtype == torch.int8:
            out[name] = t.float() * scale.reshape(-1, *([1] * (t.dim() - 1)))
        else:
            out[name] = t.float()
    return out
