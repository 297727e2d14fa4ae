"""Training progress into status.progress: the latest /progress reading (polled by the
handlers, never inside a pass) and a finished pod's final step and loss."""

from __future__ import annotations

import datetime as dt

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller.observed import PodView
from kubetrain.controller.reconcile.state import TERMINAL, PassState


def record_final_progress(s: PassState, pod: PodView) -> None:
    """The last poll may predate the last steps: the launcher's termination record has the
    final step and loss, so a finished job shows where training really ended."""
    if pod.final_step is None or s.st.phase in TERMINAL:
        return
    old = s.st.progress or api.ProgressStatus()
    if old.step is not None and old.step >= pod.final_step:
        return
    stamp = c.rfc3339(s.now)
    s.st.progress = old.model_copy(update={
        "step": pod.final_step,
        "loss": pod.final_loss if pod.final_loss is not None else old.loss,
        "updated_at": stamp,
        "step_advanced_at": stamp,
    })


def record_progress(s: PassState, spec: api.TrainingJobSpec) -> None:
    """Write the latest /progress reading into status.progress, if it is newer."""
    reading = s.observed.progress
    if reading is None:
        return
    old = s.st.progress or api.ProgressStatus()
    if (c.parse_time(old.updated_at) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)) >= reading.read_at:
        return
    d = reading.data

    def num(key: str) -> float | None:
        v = d.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    step = d.get("step") if isinstance(d.get("step"), int) else old.step
    ckpt = d.get("lastCheckpointStep")
    max_steps = d.get("maxSteps")
    advanced = step != old.step or old.step_advanced_at is None
    s.st.progress = api.ProgressStatus(
        step=step,
        max_steps=max_steps if isinstance(max_steps, int) else spec.training.max_steps,
        loss=num("loss"),
        learning_rate=num("learningRate"),
        tokens_per_second=num("tokensPerSecond"),
        mfu=num("mfu"),
        last_checkpoint_step=ckpt if isinstance(ckpt, int) else old.last_checkpoint_step,
        updated_at=c.rfc3339(reading.read_at),
        step_advanced_at=c.rfc3339(reading.read_at) if advanced else old.step_advanced_at,
    )
