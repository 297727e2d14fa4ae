"""DeepSpeed's fp16 loss scaling as a pure state machine (no torch).

The trainer multiplies the loss by `scale`, checks the gradients for inf/NaN
and calls `update(overflow)`; a True return means "skip this optimizer step"
(and do not advance the lr schedule). The rules are DeepSpeed's
`DynamicLossScaler.update_scale` (deepspeed/runtime/fp16/loss_scaler.py, the
scaler its ZeRO optimizers use, checked against DeepSpeed 0.19.5+):

- overflow: when the hysteresis budget is spent (`cur_hysteresis == 1`, or
  hysteresis == 1) the scale is divided by 2, floored at min_loss_scale;
  otherwise only the budget shrinks by one. Either way the step is skipped
  and the overflow iteration is remembered. An overflow while the scale is
  already at min_loss_scale with the budget spent raises
  `LossScaleAtMinimumError` (DeepSpeed: "cannot decrease scale anymore.
  Exiting run.") unless `raise_at_min_scale=False`.
- no overflow: with consecutive_hysteresis the budget is refilled. The scale
  doubles when `stable = iter - last_overflow_iter - 1` is > 0 and a multiple
  of loss_scale_window; without consecutive_hysteresis the budget is refilled
  only then. So the first growth comes on the (window + 1)-th clean step
  after the start or an overflow, later ones every `window` clean steps.

ZeRO stage 0 (`zero_rules=False`, strategy ddp) follows DeepSpeed's stage-0
fp16 optimizers instead (FP16_Optimizer and FP16_UnfusedOptimizer
`_update_scale`): every overflow halves the scale, floored at
min_loss_scale, with no hysteresis and no error at the minimum (a run stuck
there is stopped by precision.maxConsecutiveNonFinite); growth follows the
same window rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["LossScaleAtMinimumError", "LossScaleConfigError", "LossScaler"]

SCALE_FACTOR = 2.0  # fixed in DeepSpeed; not configurable there


class LossScaleConfigError(ValueError):
    """An fp16 setting that cannot be used; `key` is the DeepSpeed `fp16.*` key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class LossScaleAtMinimumError(RuntimeError):
    """Gradients overflowed with the loss scale already at min_loss_scale: training has diverged."""


def _check_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LossScaleConfigError(key, f"{key} must be a finite number, got {value!r}")
    return float(value)


def _check_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LossScaleConfigError(key, f"{key} must be an integer, got {value!r}")
    return value


class LossScaler:
    """Static (`dynamic=False`) or dynamic fp16 loss scale; build it with `from_config`."""

    def __init__(
        self,
        *,
        scale: float,
        dynamic: bool,
        scale_window: int = 1000,
        hysteresis: int = 2,
        consecutive_hysteresis: bool = False,
        min_scale: float = 1.0,
        raise_at_min_scale: bool = True,
        zero_rules: bool = True,
    ) -> None:
        self.scale = float(scale)
        self.dynamic = dynamic
        self.scale_window = scale_window
        self.hysteresis = hysteresis  # DeepSpeed's delayed_shift
        self.consecutive_hysteresis = consecutive_hysteresis
        self.min_scale = float(min_scale)
        self.raise_at_min_scale = raise_at_min_scale
        self.zero_rules = zero_rules  # False: DeepSpeed's stage-0 rule (no hysteresis, no raise)
        self.cur_hysteresis = hysteresis
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self.skipped_steps = 0

    @classmethod
    def from_config(
        cls,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        consecutive_hysteresis: bool = False,
        min_loss_scale: float = 1,
        *,
        raise_at_min_scale: bool = True,
        zero_stage: int = 1,
    ) -> LossScaler:
        """From DeepSpeed's `fp16` block; dynamic when loss_scale == 0 (DeepSpeed's defaults).
        `zero_stage` 0 picks DeepSpeed's stage-0 update rule, 1-3 its ZeRO one."""
        loss_scale = _check_number("loss_scale", loss_scale)
        if loss_scale < 0:
            raise LossScaleConfigError(
                "loss_scale", f"loss_scale must be >= 0 (0 enables dynamic loss scaling), got {loss_scale!r}"
            )
        if loss_scale > 0:
            return cls(scale=loss_scale, dynamic=False)
        power = _check_int("initial_scale_power", initial_scale_power)
        window = _check_int("loss_scale_window", loss_scale_window)
        if window <= 0:
            raise LossScaleConfigError(
                "loss_scale_window", f"loss_scale_window must be > 0 with dynamic loss scaling, got {window}"
            )
        # DeepSpeed accepts hysteresis <= 0, but then the budget never reads 1
        # and the scale is never lowered: every step would overflow forever.
        hyst = _check_int("hysteresis", hysteresis)
        if hyst < 1:
            raise LossScaleConfigError("hysteresis", f"hysteresis must be >= 1, got {hyst}")
        if not isinstance(consecutive_hysteresis, bool):
            raise LossScaleConfigError(
                "consecutive_hysteresis",
                f"consecutive_hysteresis must be true or false, got {consecutive_hysteresis!r}",
            )
        min_scale = _check_number("min_loss_scale", min_loss_scale)
        if min_scale <= 0:
            raise LossScaleConfigError(
                "min_loss_scale",
                f"min_loss_scale must be > 0 with dynamic loss scaling, got {min_loss_scale!r}",
            )
        return cls(
            scale=2.0**power,
            dynamic=True,
            scale_window=window,
            hysteresis=hyst,
            consecutive_hysteresis=consecutive_hysteresis,
            min_scale=min_scale,
            raise_at_min_scale=raise_at_min_scale and zero_stage > 0,
            zero_rules=zero_stage > 0,
        )

    def update(self, overflow: bool) -> bool:
        """Record one optimizer step's overflow check; True means skip the step."""
        if self.dynamic:
            self._update_dynamic(overflow)
        self.cur_iter += 1
        if overflow:
            self.skipped_steps += 1
        return overflow

    def _update_dynamic(self, overflow: bool) -> None:
        if overflow and not self.zero_rules:
            self.scale = max(self.scale / SCALE_FACTOR, self.min_scale)
            self.last_overflow_iter = self.cur_iter
            return
        if overflow:
            if self.hysteresis == 1 or self.cur_hysteresis == 1:
                if self.scale == self.min_scale and self.raise_at_min_scale:
                    raise LossScaleAtMinimumError(
                        f"gradients overflowed at step {self.cur_iter} with the loss scale already at "
                        f"min_loss_scale={self.min_scale:g}; the run has diverged (lower the learning rate, "
                        f"use bf16, or lower fp16.min_loss_scale)"
                    )
                self.scale = max(self.scale / SCALE_FACTOR, self.min_scale)
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
            return
        if self.consecutive_hysteresis:
            self.cur_hysteresis = self.hysteresis
        stable_interval = (self.cur_iter - self.last_overflow_iter) - 1
        if stable_interval > 0 and stable_interval % self.scale_window == 0:
            if not self.consecutive_hysteresis:
                self.cur_hysteresis = self.hysteresis
            self.scale *= SCALE_FACTOR

    def state_dict(self) -> dict[str, Any]:
        return {
            "dynamic": self.dynamic,
            "scale": self.scale,
            "cur_iter": self.cur_iter,
            "last_overflow_iter": self.last_overflow_iter,
            "cur_hysteresis": self.cur_hysteresis,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters; a static scaler keeps its configured scale.

        Switching between static and dynamic across a resume keeps the new
        config's mode: only what the new mode tracks is restored.
        """
        self.cur_iter = int(state["cur_iter"])
        self.skipped_steps = int(state["skipped_steps"])
        if not self.dynamic:
            return
        if not state.get("dynamic", True):
            # Static -> dynamic: start the growth window at the resume point.
            self.last_overflow_iter = self.cur_iter - 1
            return
        self.scale = float(state["scale"])
        self.last_overflow_iter = int(state["last_overflow_iter"])
        # Clamp in case the hysteresis setting shrank since the checkpoint.
        self.cur_hysteresis = min(int(state["cur_hysteresis"]), self.hysteresis)

    def __repr__(self) -> str:
        kind = ("dynamic" if self.zero_rules else "dynamic stage-0") if self.dynamic else "static"
        return f"LossScaler({kind}, scale={self.scale:g}, cur_hysteresis={self.cur_hysteresis}, iter={self.cur_iter})"
