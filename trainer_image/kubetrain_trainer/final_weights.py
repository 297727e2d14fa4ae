"""`zero_optimization.gather_16bit_weights_on_model_save`: at the end of training the model's weights are
gathered from every shard (a collective: all ranks call this) and rank 0 writes them, consolidated, in 16
bits as ``<run dir>/final/model.safetensors`` (fp16 when the job trains in fp16, else bf16), plus
``config.json`` -- the same layout as ``kubetrain export``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .engine import Trainer


def write_consolidated_16bit(trainer: Trainer, out: Path) -> dict[str, Any] | None:
    """Gather the full state dict (all ranks) and write it in 16 bits on rank 0; returns the config written."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {k: v for k, v in get_model_state_dict(trainer.par.inner, options=options).items()
               if isinstance(v, torch.Tensor)}
    if not trainer.ctx.is_main:
        return None
    dtype = torch.float16 if trainer.cfg.dtype == "fp16" else torch.bfloat16
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    # tied embeddings share storage: safetensors refuses aliases, so keep one copy of each storage
    seen: dict[int, str] = {}
    for name in list(tensors):
        ptr = weights[name].data_ptr()
        if ptr in seen:
            del tensors[name]
        else:
            seen[ptr] = name
    out.mkdir(parents=True, exist_ok=True)
    label = "fp16" if dtype == torch.float16 else "bf16"
    save_file(tensors, str(out / "model.safetensors"),
              metadata={"format": "pt", "kubetrain_step": str(trainer.step), "kubetrain_dtype": label})
    config = {"format": "kubetrain-safetensors", "version": 1, "dtype": label, "step": trainer.step,
              "job": trainer.cfg.name, "source": "deepspeed gather_16bit_weights_on_model_save",
              "tied": {name: seen[weights[name].data_ptr()] for name in weights if name not in tensors}}
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1) + "\n")
    os.replace(tmp, out / "config.json")
    return config
