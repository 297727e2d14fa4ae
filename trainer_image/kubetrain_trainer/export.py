"""``kubetrain export CKPT --format safetensors [--dtype fp32|bf16|int8]``: a checkpoint's model
weights, consolidated into one plain safetensors file that needs neither Kubetrain nor
torch.distributed to use.

Output directory::

    model.safetensors   the model's state dict (the FQNs of ``model.state_dict()``, full tensors)
    config.json         model sizes (or entrypoint), dtype, quantization, source step

The checkpoint's shards (whatever world size and strategy wrote them) are read with DCP's
``_load_state_dict_from_keys`` in this one process (no process group), model entries only, so the
optimizer state is never loaded.  A tied output head appears under both names, as in
``state_dict()``, so ``model.load_state_dict(load_file(...))`` works as is.

``--dtype int8`` is post-training weight quantization: every floating-point tensor of two or more
dimensions (Linear weights, embeddings) becomes int8 ``q`` with a float32 scale per output channel
(row; dim 0), ``scale = max|w_row| / 127`` and ``q = round(w / scale)`` clamped to [-127, 127]
(symmetric, no zero point), stored as ``<name>_scale`` (shape ``[rows]``).  Dequantize:
``w ≈ q.float() * scale[:, None, ...]`` (``dequantize`` here).  1-D tensors (norms, biases) stay
float32.  The error is at most half a step (scale / 2) per element.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ck
from .quantize import SCALE_SUFFIX, dequantize, quantize_int8

DTYPES = ("fp32", "bf16", "int8")
__all__ = ["DTYPES", "SCALE_SUFFIX", "convert", "dequantize", "export", "load_model_weights", "quantize_int8"]


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's full tensors from a DCP checkpoint directory, in this process."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    keys = {k for k in FileSystemReader(str(path)).read_metadata().state_dict_metadata if k.startswith("model.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: loading in a single process" is the point
        sd = _load_state_dict_from_keys(keys, checkpoint_id=str(path))
    model = sd.get("model", {})
    return {k: v.detach().contiguous() for k, v in model.items() if isinstance(v, torch.Tensor)}


def convert(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if not w.is_floating_point():
            out[name] = w
        elif dtype == "bf16":
            out[name] = w.to(torch.bfloat16).contiguous()
        elif dtype == "int8" and w.dim() >= 2:
            out[name], out[name + SCALE_SUFFIX] = quantize_int8(w)
        else:
            out[name] = w.float().contiguous()
    return out


def export(checkpoint: str | Path, output: str | Path, *, dtype: str = "fp32", fmt: str = "safetensors") -> dict[str, Any]:
    """Write ``output/model.safetensors`` + ``output/config.json``; returns the config written."""
    from safetensors.torch import save_file

    if fmt != "safetensors":
        raise ValueError(f"--format must be safetensors, got {fmt!r}")
    path = ck.resolve(checkpoint)
    meta = ck.read_meta(path)
    weights = load_model_weights(path)
    if not weights:
        raise ValueError(f"{path} holds no model tensors")
    tensors = convert(weights, dtype)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    quant = None
    if dtype == "int8":
        quant = {
            "method": "int8-symmetric-per-channel",
            "axis": 0,
            "scale_suffix": SCALE_SUFFIX,
            "scale_dtype": "float32",
            "dequantize": "w = q.float() * scale.reshape(-1, *[1] * (q.dim() - 1))",
            "quantized": sorted(k for k in tensors if k + SCALE_SUFFIX in tensors),
        }
    config = {
        "format": "kubetrain-safetensors",
        "version": 1,
        "architecture": "kubetrain-gpt" if not (meta.get("model") or {}).get("entrypoint") else "entrypoint",
        "model": meta.get("model"),
        "dtype": dtype,
        "quantization": quant,
        "step": meta["step"],
        "job": meta.get("job"),
        "source": str(path.resolve()),
        "parameters": int(sum(t.numel() for k, t in weights.items() if k != "head.weight"
                              or not (meta.get("model") or {}).get("tie_embeddings"))),
    }
    save_file(tensors, str(out / "model.safetensors"),
              metadata={"format": "pt", "kubetrain_step": str(meta["step"]), "kubetrain_dtype": dtype})
    ck.write_atomic(out / "config.json", json.dumps(config, indent=1) + "\n")
    return config
