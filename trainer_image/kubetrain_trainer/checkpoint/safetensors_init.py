"""``checkpoint.initFrom`` from a ``.safetensors`` file: model weights only, read with the
safetensors library (a header of names, dtypes and shapes plus raw bytes: no pickle, nothing in
the file can run code), unlike a DCP checkpoint whose ``.metadata`` is unpickled.

The file holds full tensors by the model's FQNs, as ``kubetrain export`` writes them (fp32, bf16
or int8 with per-row ``<name>_scale``; int8 is dequantized first). Every rank reads the file and
keeps the part it owns: ``set_model_state_dict(..., full_state_dict=True)`` slices the full tensors
into this rank's FSDP2/tensor-parallel shards. Names and shapes are checked first, so a file made
for another model is one line naming the tensor, not a torch traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError, SpecError
from .comm import Comm

if TYPE_CHECKING:
    import torch

    from ..engine import Trainer

log = logging.getLogger("kubetrain_trainer")

SUFFIX = ".safetensors"
_LISTED = 5  # names shown in a message before "and N more"


def is_safetensors(path: str) -> bool:
    return path.endswith(SUFFIX)


def _names(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_LISTED])
    return shown + (f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..quantize import SCALE_SUFFIX, dequantize

    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise ModelError(f"checkpoint.initFrom.path {path}: not a readable safetensors file: {e}") from None
    if any(k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in tensors for k in tensors):
        tensors = dequantize(tensors)  # an int8 export: back to float32
    return tensors


def check_fits(path: Path, tensors: dict[str, Any], expected: dict[str, tuple[int, ...]], *, partial: bool) -> None:
    """ModelError naming the first problem: a tensor the model needs that the file lacks, one the
    model does not have (unless ``partial``: a pipeline stage holds only its own layers), a shape
    that differs."""
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelError(f"checkpoint.initFrom.path {path}: the file lacks {len(missing)} tensor(s) of this "
                         f"model: {_names(missing)} (was it exported from a job with the same model?)")
    extra = [k for k in tensors if k not in expected]
    if extra and not partial:
        raise ModelError(f"checkpoint.initFrom.path {path}: the file has {len(extra)} tensor(s) this model does "
                         f"not: {_names(extra)} (was it exported from a job with the same model?)")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ModelError(f"checkpoint.initFrom.path {path}: tensor {name} has shape {list(got)} in the file "
                             f"but {list(shape)} in this model")


def load_weights(trainer: Trainer, comm: Comm, given: str) -> Path:
    """Load the weights of ``given`` into the trainer's model on every rank; returns the path."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    path = Path(given)
    problem = None
    if comm.rank == 0:
        if not path.exists():
            problem = "no such file"
        elif not path.is_file():
            problem = "not a file (a .safetensors path must name the file itself)"
    problem = comm.broadcast(problem)
    if problem:
        raise SpecError(f"checkpoint.initFrom.path {given}: {problem}")
    model = trainer.par.inner
    live: dict[str, Any] = dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=False)))
    expected = {k: tuple(v.shape) for k, v in live.items()}  # a DTensor's shape is the global one
    tensors = _read(path)
    check_fits(path, tensors, expected, partial=trainer.cfg.parallel.pipeline_parallel > 1)
    full: dict[str, Any] = {k: tensors[k].to(live[k].dtype) for k in expected}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=True))
    if comm.rank == 0:
        log.info("loaded weights from %s (%d tensors, safetensors)", path, len(full))
    return path
