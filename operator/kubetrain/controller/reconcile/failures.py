"""Pod outcomes by the exit-code contract: success, permanent and retryable failures,
preemption; gang restarts with exponential backoff."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from kubetrain import api
from kubetrain.api.constants import PERMANENT_REASON_BY_CODE
from kubetrain.controller import conditions as c
from kubetrain.controller.observed import PodView
from kubetrain.controller.reconcile.progress import record_final_progress
from kubetrain.controller.reconcile.state import (
    R_BACKOFF_LIMIT,
    R_COMPLETED,
    R_PREEMPTED,
    R_WORKER_FAILED,
    Decision,
    PassState,
    backoff_seconds,
)
from kubetrain.controller.reconcile.terminal import finish
from kubetrain.controller.reconcile.workers import drop_old_generations

_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")


def outcomes(s: PassState, spec: api.TrainingJobSpec, outcome: str) -> list[PodView]:
    """Finished pods of the current generation (scaled-away indices excluded) by outcome."""
    return sorted(
        (p for p in s.current() if p.index < spec.workers.replicas and p.outcome == outcome),
        key=lambda p: (p.index, p.incarnation),
    )


def success(s: PassState, spec: api.TrainingJobSpec) -> Decision | None:
    """The trainer exits 0 only when training is done and the final checkpoint committed,
    so one worker's success is the job's; the rest are cleaned per cleanPodPolicy."""
    done = outcomes(s, spec, "succeeded")
    if done:
        record_final_progress(s, max(done, key=lambda p: -1 if p.final_step is None else p.final_step))
        return finish(s, True, R_COMPLETED, f"training finished: pod {done[0].name} exited 0")
    return None


def failures(s: PassState, spec: api.TrainingJobSpec) -> Decision | None:
    """Failed pods of the current generation, by precedence: permanent, retryable, preempted."""
    by = {o: outcomes(s, spec, o) for o in ("permanent", "retryable", "preempted")}
    if by["permanent"]:
        p = by["permanent"][0]
        record_failure(s, p)
        reason = p.reason if _CAMEL.match(p.reason or "") and p.reason not in ("Error", "Completed") \
            else PERMANENT_REASON_BY_CODE.get(p.exit_code or 0, "PermanentError")
        return finish(s, False, reason, f"pod {p.name} exited {p.exit_code}: {p.message or p.reason}")
    if by["retryable"]:
        p = by["retryable"][0]
        record_failure(s, p)
        limit = spec.run_policy.backoff_limit
        done = s.restarts.failure
        what = f"pod {p.name} exited {p.exit_code}" + (f" ({p.reason})" if p.reason else "") + \
            (f": {p.message}" if p.message else "")
        if done >= limit:
            return finish(s, False, R_BACKOFF_LIMIT, f"{what}; backoffLimit ({limit}) reached")
        delay = backoff_seconds(done + 1, s.settings)
        return restart(s, "failure", "Warning", R_WORKER_FAILED,
                       f"{what}; restart {done + 1} of {limit} in {delay:.0f}s", spec.workers.replicas, delay)
    if by["preempted"]:
        p = by["preempted"][0]
        record_failure(s, p)
        return restart(s, "preemption", "Normal", R_PREEMPTED,
                       f"pod {p.name} was preempted after a checkpoint (exit 75): restarting, "
                       f"not counted toward backoffLimit", spec.workers.replicas)
    return None


def record_failure(s: PassState, p: PodView) -> None:
    s.st.last_failure = api.FailureStatus(
        pod=p.name, exit_code=p.exit_code, reason=p.reason, message=p.message[-1024:], time=c.rfc3339(s.now)
    )


def restart(
    s: PassState, cause: str, type_: Literal["Normal", "Warning"], reason: str, message: str, desired: int,
    delay: float = 0.0,
) -> Decision:
    """Restart the whole gang: a new generation, counted under `cause`, after `delay`."""
    setattr(s.restarts, cause, getattr(s.restarts, cause) + 1)
    s.restarts.total += 1
    s.gen += 1
    s.st.restart_generation = s.gen
    s.st.below_min_since = None
    s.st.world_size = 0
    if delay > 0:
        # Rounded up to the second the status can hold: a stored time cut short would cut
        # the backoff short.
        until = c.ceil_seconds(s.now + dt.timedelta(seconds=delay))
        s.st.backoff_until = c.rfc3339(until)
        s.at(until)
    else:
        s.st.backoff_until = None
        s.at(s.now)  # create the new generation right after this status is written
    s.st.phase = "Restarting"
    s.cond(c.RUNNING, False, reason, message)
    s.event(type_, reason, message)
    drop_old_generations(s)
    s.counts(desired)
    return s.decision()
