"""Process-group setup and teardown: NCCL on GPUs, gloo on CPU, chosen by device, no code change."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kubetrain.api.constants import ENV_DEVICE

from .errors import SpecError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def pick_device(gpus_per_worker: int | None, local_rank: int) -> torch.device:
    """``$KUBETRAIN_DEVICE`` (cpu|cuda) wins; else CUDA when asked for (gpusPerWorker > 0) or, when the
    spec does not say, when present."""
    forced = os.environ.get(ENV_DEVICE, "").strip().lower()
    want_cuda = forced == "cuda" or (not forced and gpus_per_worker != 0 and torch.cuda.is_available())
    if forced not in ("", "cpu", "cuda"):
        raise SpecError(f"{ENV_DEVICE} must be cpu or cuda, got {forced!r}")
    if not want_cuda and gpus_per_worker and not forced:
        raise SpecError(
            f"spec.workers.gpusPerWorker is {gpus_per_worker} but no CUDA device is visible "
            f"(set {ENV_DEVICE}=cpu to run on CPU anyway)"
        )
    if want_cuda:
        if not torch.cuda.is_available():
            raise SpecError(f"{ENV_DEVICE}=cuda but no CUDA device is visible")
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init(gpus_per_worker: int | None, timeout_s: float) -> DistContext:
    """Join the process group torchrun describes in the environment (or a 1-process group).
    ``timeout_s``: of one collective (``spec.elastic.collectiveTimeoutSeconds``)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = pick_device(gpus_per_worker, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(
                backend, timeout=timeout, device_id=device if device.type == "cuda" else None
            )
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return DistContext(rank, world, local_rank, local_world, device, backend)


def shutdown() -> None:
    """Barrier then destroy, so no rank tears gloo down under a peer still talking to it."""
    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
