"""The rules around one optimizer step, besides forward/backward: the schedule's learning rate (and
betas) at applied step k, gradient clipping, and the non-finite guard.

DESIGN.md: the learning rate of optimizer step k is the schedule's at k (``applied_steps``), so a
skipped step does not advance it.
"""

from __future__ import annotations

import torch

from kubetrain.api.schedules import LRSchedule

from .errors import DivergedError
from .optim import set_lr


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: LRSchedule, k: int) -> float:
    """Set the learning rate (and a cyclic schedule's betas / momentum) of applied step ``k``."""
    lr = schedule.lr_at(k)
    set_lr(optimizer, lr)
    betas_at = getattr(schedule, "betas_at", None)
    betas = betas_at(k) if callable(betas_at) else None
    if betas is not None:
        for g in optimizer.param_groups:
            if "betas" in g:
                g["betas"] = tuple(betas)
            elif "momentum" in g:
                g["momentum"] = betas[0]
    return lr


def clip_coefficient(scale: float, grad_norm: float, clip: float) -> float:
    """The factor on the (loss-scaled) gradients: unscale, then clip the global norm to ``clip``
    (``training.gradientClipping``; 0 disables)."""
    coef = 1.0 / scale
    if clip > 0 and grad_norm > clip:
        coef *= clip / (grad_norm + 1e-6)
    return coef


class NonFiniteGuard:
    """A non-finite loss (any dtype) or non-finite gradients outside fp16 (where the loss scaler owns
    overflows) skip the step; ``limit`` such steps in a row (``precision.maxConsecutiveNonFinite``)
    stop the run as diverged."""

    def __init__(self, limit: int, uses_loss_scaling: bool) -> None:
        self.limit, self.uses_loss_scaling = limit, uses_loss_scaling
        self.consecutive = 0

    def check(self, loss_ok: bool, grad_ok: bool, step: int) -> None:
        """After iteration ``step`` (1-based)."""
        bad = not loss_ok or (not grad_ok and not self.uses_loss_scaling)
        self.consecutive = self.consecutive + 1 if bad else 0
        if bad and self.limit and self.consecutive >= self.limit:
            what = "loss" if not loss_ok else "gradient norm"
            raise DivergedError(
                f"the {what} was not finite for {self.consecutive} consecutive steps "
                f"(through step {step}; precision.maxConsecutiveNonFinite={self.limit}): the run has "
                "diverged. Lower the learning rate, enable gradient clipping, or use bf16."
            )
