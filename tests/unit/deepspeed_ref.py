"""DeepSpeed 0.19.8 itself, on CPU, as the reference for `kubetrain.api.deepspeed` and the loss scaler.

`deepspeed` is a dev dependency (installed with DS_BUILD_OPS=0: no CUDA op is compiled). Its
config parser takes the data-parallel world size from `torch.distributed`, so `config()` starts
a one-process gloo group around each parse (destroyed afterwards) and hands DeepSpeed an `mpu` (DeepSpeed's own interface for a
data-parallel size) that reports the world size under test: that is the only thing not real
here, and it is DeepSpeed's documented hook for it. DeepSpeed's CPU shared-memory collective
op is marked unavailable first so that no C++ extension is JIT-compiled (it is only used by
collectives, which the config parser never runs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DS_BUILD_OPS", "0")


@contextmanager
def _group() -> Iterator[None]:
    """A one-process gloo group for as long as DeepSpeed reads it; destroyed afterwards, so the rest of a
    pytest process (which may run in-process trainer code) never sees a stray default group."""
    import torch.distributed as tdist

    created = not tdist.is_initialized()
    if created:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        if created:
            tdist.destroy_process_group()


@cache
def _deepspeed() -> Any:
    import deepspeed
    import deepspeed.ops

    assert deepspeed.__version__ == "0.19.8", deepspeed.__version__
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    with _group():
        deepspeed.init_distributed(dist_backend="gloo")
    return deepspeed


class _DataParallel:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


def config(ds: dict[str, Any], world_size: int) -> Any:
    """DeepSpeed's DeepSpeedConfig for `ds` at a data-parallel size of `world_size` (raises as DeepSpeed does)."""
    _deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig

    with _group():
        return DeepSpeedConfig(dict(ds), mpu=_DataParallel(world_size))


def scale_sequence(fp16: dict[str, Any], overflows: str, *, stage: int) -> list[Any]:
    """The loss scale after each step of `overflows` ('x' overflow, '.' clean) as DeepSpeed's own
    classes compute it: stage 0 -> FP16_Optimizer._update_scale (fused profile), stages 1-3 ->
    DynamicLossScaler.update_scale (what the ZeRO optimizers call). A DeepSpeed exception
    (ZeRO: overflow at the minimum scale) is returned as the string 'raise' in place of a scale."""
    _deepspeed()
    with _group():  # DeepSpeed logs overflows through deepspeed.comm
        return _scale_sequence(fp16, overflows, stage=stage)


def _scale_sequence(fp16: dict[str, Any], overflows: str, *, stage: int) -> list[Any]:
    """`scale_sequence` inside a process group."""
    _deepspeed()
    import torch
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler, LossScaleConfig, LossScaleProfile

    cfg = config({"train_batch_size": 1, "fp16": {"enabled": True, **fp16}}, 1)
    f16 = cfg.float16_config
    args = f16.dynamic_loss_scale_args()
    out: list[Any] = []
    if stage == 0:
        lsc = LossScaleConfig(low_precision_dtype=torch.float16, dynamic_loss_scale=f16.loss_scale == 0,
                              static_loss_scale=f16.loss_scale, dynamic_loss_args=args,
                              profile=LossScaleProfile.FUSED, initial_dynamic_scale=2**f16.initial_scale_power)
        owner = SimpleNamespace(loss_scale_config=lsc, verbose=False)
        for c in overflows:
            FP16_Optimizer._update_scale(owner, c == "x")
            out.append(float(lsc.cur_scale))
        return out
    scaler = CreateLossScaler(torch.float16, f16.loss_scale, f16.loss_scale == 0, args)
    for c in overflows:
        try:
            scaler.update_scale(c == "x")
        except Exception as exc:  # DeepSpeed raises a bare Exception at the minimum scale
            if "minimum" not in str(exc):
                raise
            out.append("raise")
            break
        out.append(float(scaler.cur_scale))
    return out
