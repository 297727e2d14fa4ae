"""Gang scheduling: the Scheduled condition, and releasing a gang that was not placed in time
(retried with backoff, failed after maxAttempts)."""

from __future__ import annotations

import datetime as dt

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller.observed import PodView
from kubetrain.controller.reconcile.failures import restart
from kubetrain.controller.reconcile.state import (
    R_PENDING,
    R_SCHEDULED,
    R_UNSCHEDULABLE,
    Decision,
    PassState,
    backoff_seconds,
)
from kubetrain.controller.reconcile.terminal import finish


def scheduled(s: PassState, cur: list[PodView], minimum: int, desired: int) -> None:
    if not cur:
        return
    placed = sum(1 for p in cur if p.node)
    stuck = next((p for p in cur if p.unschedulable), None)
    if placed >= minimum and stuck is None:
        s.cond(c.SCHEDULED, True, R_SCHEDULED, f"{placed} of {desired} workers scheduled")
    elif stuck is not None:
        before = c.get(s.conds, c.SCHEDULED)
        if before is None or before.reason != R_UNSCHEDULABLE:
            s.event("Warning", R_UNSCHEDULABLE, f"pod {stuck.name}: {stuck.unschedulable}")
        s.cond(c.SCHEDULED, placed >= minimum, R_UNSCHEDULABLE,
               f"{placed} of {desired} workers scheduled; pod {stuck.name}: {stuck.unschedulable}")
    else:
        s.cond(c.SCHEDULED, False, R_PENDING, f"{placed} of {desired} workers scheduled, {minimum} needed")


def gang_timeout(s: PassState, spec: api.TrainingJobSpec, cur: list[PodView], desired: int) -> Decision | None:
    """With runPolicy.scheduling set: fewer than minReplicas scheduled for
    schedulingTimeoutSeconds releases the whole gang (the scheduled pods too: a partial
    gang must not sit on GPUs), then retries after a backoff, and fails after maxAttempts."""
    sched, w = spec.run_policy.scheduling, spec.workers
    if sched is None or not cur:
        return None
    placed = sum(1 for p in cur if p.node)
    if placed >= w.min:
        return None
    starts = [p.created for p in cur if p.created is not None]
    start = min(starts) if starts else s.now
    cond = c.get(s.old.conditions or [], c.SCHEDULED)  # as it was before this pass
    since = c.parse_time(cond.last_transition_time) if cond is not None and cond.status == "False" else None
    if since is not None and since > start:
        start = since  # scheduled once, then lost workers: the clock starts at the drop
    expiry = start + dt.timedelta(seconds=sched.scheduling_timeout_seconds)
    if s.now < expiry:
        s.at(expiry)
        return None
    attempts = (s.st.scheduling_attempts or 0) + 1
    s.st.scheduling_attempts = attempts
    what = (f"only {placed} of at least {w.min} workers were scheduled within "
            f"{sched.scheduling_timeout_seconds}s (attempt {attempts} of {sched.max_attempts})")
    s.cond(c.SCHEDULED, False, R_UNSCHEDULABLE, what)
    if attempts >= sched.max_attempts:
        return finish(s, False, R_UNSCHEDULABLE, f"{what}: giving up")
    delay = backoff_seconds(attempts, s.settings)
    return restart(s, "unschedulable", "Warning", R_UNSCHEDULABLE,
                   f"{what}: releasing every worker, retrying in {delay:.0f}s", desired, delay)
