"""Precision: autocast (ddp/zero1) or an FSDP2 MixedPrecisionPolicy (zero2/zero3), with fp32 master
weights and fp32 gradient reductions; DeepSpeed's fp16 loss scaler from ``kubetrain_trainer.loss_scale``;
fp8 Linear layers via ``fp8``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from kubetrain.api import PrecisionSpec
from kubetrain_trainer.loss_scale import LossScaleConfigError, LossScaler

from .config import resolved
from .errors import SpecError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


class Scaler(Protocol):
    scale: float
    skipped_steps: int

    def update(self, overflow: bool) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> None: ...


class UnitScaler:
    """fp32/bf16/fp8: scale 1; skipped (non-finite) steps are still counted."""

    def __init__(self) -> None:
        self.scale = 1.0
        self.skipped_steps = 0

    def update(self, overflow: bool) -> bool:
        self.skipped_steps += int(overflow)
        return overflow

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Any) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))


def make_scaler(cfg: PrecisionSpec, strategy: str = "zero1") -> Scaler:
    """The loss scaler of a resolved ``spec.precision`` (fp16: ``kubetrain.api.deepspeed.resolve``
    filled every loss-scale field). Strategy ddp (ZeRO stage 0) gets DeepSpeed's stage-0 rule."""
    if cfg.dtype != "fp16":
        return UnitScaler()
    try:
        return LossScaler.from_config(
            loss_scale=resolved(cfg.loss_scale, "precision.lossScale"),
            initial_scale_power=resolved(cfg.initial_scale_power, "precision.initialScalePower"),
            loss_scale_window=resolved(cfg.loss_scale_window, "precision.lossScaleWindow"),
            hysteresis=resolved(cfg.hysteresis, "precision.hysteresis"),
            consecutive_hysteresis=resolved(cfg.consecutive_hysteresis, "precision.consecutiveHysteresis"),
            min_loss_scale=resolved(cfg.min_loss_scale, "precision.minLossScale"),
            zero_stage=0 if strategy == "ddp" else 1,
        )
    except LossScaleConfigError as e:
        raise SpecError(f"spec.precision: {e.message}") from None


@dataclass
class PrecisionPlan:
    dtype: str
    compute_dtype: torch.dtype | None  # None: fp32
    use_fsdp_policy: bool  # zero2/zero3 cast via MixedPrecisionPolicy instead of autocast
    scaler: Scaler
    device_type: str

    @property
    def uses_loss_scaling(self) -> bool:
        return self.dtype == "fp16"

    def mp_policy(self) -> MixedPrecisionPolicy:
        if self.compute_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.compute_dtype is None or self.use_fsdp_policy:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)


def make_plan(cfg: PrecisionSpec, strategy: str, device: torch.device) -> PrecisionPlan:
    dtype = resolved(cfg.dtype, "precision.dtype")
    return PrecisionPlan(
        dtype=dtype,
        compute_dtype=_DTYPES.get(dtype),
        use_fsdp_policy=strategy in ("zero2", "zero3"),
        scaler=make_scaler(cfg, strategy),
        device_type=device.type,
    )
