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
    r = reading.data  # a kubetrain.api.progress.ProgressReport, the model the trainer writes it with
    advanced = r.step != old.step or old.step_advanced_at is None
    s.st.progress = api.ProgressStatus(
        step=r.step,
        max_steps=r.max_steps if r.max_steps is not None else spec.training.max_steps,
        loss=r.loss,
        learning_rate=r.learning_rate,
        tokens_per_second=r.tokens_per_second,
        mfu=r.mfu,
        last_checkpoint_step=r.last_checkpoint_step if r.last_checkpoint_step is not None else old.last_checkpoint_step,
        updated_at=c.rfc3339(reading.read_at),
        step_advanced_at=c.rfc3339(reading.read_at) if advanced else old.step_advanced_at,
    )
