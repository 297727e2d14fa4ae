"""FAULT INJECTION for tests only — never set these in production.

Steps are numbered as in the metrics log (1 = the first step).

``KUBETRAIN_FAULT_INF_GRAD_STEPS=3,4``  after backward at these steps, rank 0 overwrites one of its
    gradients with +inf (an fp16-style overflow that only ONE rank sees, so the skip decision has
    to travel through the all-reduce).
``KUBETRAIN_FAULT_NAN_LOSS_STEPS=5``    at these steps rank 0's loss (and so its gradients) is NaN.
``KUBETRAIN_FAULT_RANK=0``              which rank injects (default 0).
``KUBETRAIN_FAULT_SAVE_HANG_STEP=6``    the checkpoint of step 6 hangs on rank 0 after its data is
    written and before it is committed (a save killed half-way must leave the previous checkpoint
    as ``latest``).
``KUBETRAIN_FAULT_STOP_SAVE_SLEEP_SECONDS=35`` the first checkpoint taken on a stop (SIGTERM) under a
    launcher (once per ``$KUBETRAIN_LAUNCH_DIR``; every one without a launcher) sleeps this long on
    rank 0 before it commits: a slow save, longer than torchrun's fixed 30 s kill.
``KUBETRAIN_FAULT_NAN_PARAM_STEP=5``   after step 5, the injecting rank overwrites one element of
    one of its parameters with NaN (poisoned state: it must never be committed as a checkpoint).
``KUBETRAIN_FAULT_STEP_SLEEP_SECONDS=0.1`` every step sleeps this long after it finished (paces
    multi-process tests that act while a job runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kubetrain.api import constants as k


def _steps(name: str) -> frozenset[int]:
    raw = os.environ.get(name, "").strip()
    return frozenset(int(s) for s in raw.split(",") if s.strip())


@dataclass(frozen=True)
class Faults:
    inf_grad_steps: frozenset[int] = field(default_factory=frozenset)
    nan_loss_steps: frozenset[int] = field(default_factory=frozenset)
    rank: int = 0
    save_hang_step: int | None = None
    stop_save_sleep_s: float = 0.0
    step_sleep_s: float = 0.0
    nan_param_step: int | None = None

    @classmethod
    def from_env(cls) -> Faults:
        return cls(
            inf_grad_steps=_steps(k.ENV_FAULT_INF_GRAD_STEPS),
            nan_loss_steps=_steps(k.ENV_FAULT_NAN_LOSS_STEPS),
            rank=int(os.environ.get(k.ENV_FAULT_RANK, "0")),
            save_hang_step=int(os.environ[k.ENV_FAULT_SAVE_HANG_STEP])
            if os.environ.get(k.ENV_FAULT_SAVE_HANG_STEP) else None,
            stop_save_sleep_s=float(os.environ.get(k.ENV_FAULT_STOP_SAVE_SLEEP_SECONDS) or 0.0),
            step_sleep_s=float(os.environ.get(k.ENV_FAULT_STEP_SLEEP_SECONDS) or 0.0),
            nan_param_step=int(os.environ[k.ENV_FAULT_NAN_PARAM_STEP])
            if os.environ.get(k.ENV_FAULT_NAN_PARAM_STEP) else None,
        )

    def inf_grad(self, step: int, rank: int) -> bool:
        return rank == self.rank and step in self.inf_grad_steps

    def nan_loss(self, step: int, rank: int) -> bool:
        return rank == self.rank and step in self.nan_loss_steps


def poison_params(faults: Faults) -> object | None:
    """The trainer callback of ``KUBETRAIN_FAULT_NAN_PARAM_STEP`` (None when it is not set)."""
    if faults.nan_param_step is None:
        return None

    def callback(trainer: object, _rec: object) -> None:
        import logging

        import torch

        t: object = trainer
        if getattr(t, "step", None) != faults.nan_param_step or t.ctx.rank != faults.rank:  # type: ignore[attr-defined]
            return
        param = next(iter(t.par.inner.parameters()))  # type: ignore[attr-defined]
        with torch.no_grad():
            local = param.to_local() if hasattr(param, "to_local") else param
            local.view(-1)[0] = float("nan")
        logging.getLogger("kubetrain_trainer").warning(
            "FAULT INJECTION: a parameter is NaN after step %d on rank %d", faults.nan_param_step, faults.rank)

    return callback
