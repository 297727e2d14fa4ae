"""The pass in order of precedence, and the phase it ends in: terminal, invalid, suspended,
success/deadline/failures, children and workers, then Pending/Running/Restarting."""

from __future__ import annotations

import datetime as dt

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller.builders import nnodes
from kubetrain.controller.observed import PodView
from kubetrain.controller.reconcile import gang, queueing, workers
from kubetrain.controller.reconcile.failures import failures, restart, success
from kubetrain.controller.reconcile.progress import record_progress
from kubetrain.controller.reconcile.state import (
    R_BELOW_MIN,
    R_DEADLINE,
    R_INVALID_SPEC,
    R_PENDING,
    R_RESCALED,
    R_RESTARTING,
    R_RESUMED,
    R_RUNNING,
    R_SUSPENDED,
    R_WORKER_LOST,
    TERMINAL,
    Decision,
    PassState,
)
from kubetrain.controller.reconcile.terminal import finish, finished
from kubetrain.controller.reconcile.watchdog import watchdog


def run(s: PassState) -> Decision:
    if s.st.phase in TERMINAL:
        queueing.mark_finished(s)
        return finished(s)
    if s.job.problems or s.job.spec is None:
        problems = "; ".join(s.job.problems) or "the spec does not parse"
        return finish(s, False, R_INVALID_SPEC, f"invalid spec: {problems}")
    spec = s.job.spec
    if spec.run_policy.suspend:
        return suspend(s, spec)
    gated = queueing.gate(s, spec)  # Kueue: run only while admitted, as admitted
    if isinstance(gated, Decision):
        return gated
    spec = gated
    resume_if_suspended(s)
    if s.st.start_time is None:
        s.st.start_time = c.rfc3339(s.now)
    record_progress(s, spec)

    outcome = success(s, spec) or deadline(s, spec) or failures(s, spec)
    if outcome is not None:
        return outcome
    workers.children(s)
    desired = max(spec.workers.min, min(spec.workers.max, spec.workers.replicas))
    if workers.shape_changed(s, spec):
        # torchrun agents built for another --nnodes cannot share a rendezvous.
        return restart(s, "rescale", "Normal", R_RESCALED,
                       f"the gang's shape changed to --nnodes {nnodes(spec)}: restarting all workers", desired)
    workers.replace_lost(s)
    workers.scale(s, desired)
    workers.create_missing(s, spec, desired)
    s.counts(desired)
    return phase(s, spec, desired)


def suspend(s: PassState, spec: api.TrainingJobSpec) -> Decision:
    """Kueue's contract: delete the workers (each gets its grace period to checkpoint),
    keep the status; unsuspending recreates them."""
    for p in s.live():
        s.delete(p)
    if s.st.phase != "Suspended":
        s.st.phase = "Suspended"
        s.event("Normal", R_SUSPENDED, "job suspended: workers checkpoint and stop; status kept")
    s.cond(c.SUSPENDED, True, R_SUSPENDED, "spec.runPolicy.suspend is true")
    s.cond(c.RUNNING, False, R_SUSPENDED, "the job is suspended")
    s.st.backoff_until = None
    s.st.below_min_since = None
    s.st.world_size = 0
    s.counts(spec.workers.replicas)
    return s.decision()


def resume_if_suspended(s: PassState) -> None:
    if c.is_true(s.conds, c.SUSPENDED):
        s.cond(c.SUSPENDED, False, R_RESUMED, "spec.runPolicy.suspend is false")
        s.event("Normal", R_RESUMED, "job resumed: recreating workers")
        s.st.phase = "Pending"


def deadline(s: PassState, spec: api.TrainingJobSpec) -> Decision | None:
    limit = spec.run_policy.active_deadline_seconds
    if limit is None:
        return None
    # Like a batch/v1 Job, the clock restarts on resume: suspended time is not running time.
    start = c.parse_time(s.st.start_time) or s.now
    resumed = c.get(s.conds, c.SUSPENDED)
    if resumed is not None and resumed.status == "False":
        start = max(start, c.parse_time(resumed.last_transition_time) or start)
    expiry = start + dt.timedelta(seconds=limit)
    if s.now >= expiry:
        return finish(s, False, R_DEADLINE, f"the job ran longer than activeDeadlineSeconds ({limit}s)")
    s.at(expiry)
    return None


def phase(s: PassState, spec: api.TrainingJobSpec, desired: int) -> Decision:
    w = spec.workers
    cur = [p for p in s.current() if p.index < desired and not p.finished]
    running = [p for p in cur if p.phase == "Running"]
    gang.scheduled(s, cur, w.min, desired)
    released = gang.gang_timeout(s, spec, cur, desired)
    if released is not None:
        return released

    if len(running) >= w.min:
        if s.st.phase != "Running":
            s.event("Normal", R_RUNNING, f"{len(running)} of {desired} workers running")
        s.st.phase = "Running"
        s.st.below_min_since = None
        s.st.world_size = min(len(running), w.max) * w.procs
        counts = f"{len(running)} of {desired} workers running, world size {s.st.world_size}"
        before = c.get(s.conds, c.RUNNING)
        if s.lost:
            s.cond(c.RUNNING, True, R_WORKER_LOST, f"{'; '.join(s.lost)}; {counts}")
        elif before is not None and before.reason == R_WORKER_LOST and len(running) < desired:
            s.cond(c.RUNNING, True, R_WORKER_LOST, before.message)  # until the replacement runs
        else:
            s.cond(c.RUNNING, True, R_RUNNING, counts)
        return watchdog(s, spec, desired) or s.decision()

    s.st.world_size = 0
    in_backoff = s.st.backoff_until is not None
    if s.st.phase in ("Running", "Restarting") and not in_backoff:
        return below_min(s, spec, len(running))
    if s.st.phase == "Restarting":
        # Backing off after a restart: keep the restart's reason on the Running condition.
        if c.is_true(s.conds, c.RUNNING):
            s.cond(c.RUNNING, False, R_RESTARTING, "the workers are being restarted")
        return s.decision()
    s.st.phase = "Pending"
    counts = f"{len(running)} of {desired} workers running, training starts with {w.min}"
    if not waiting_visible(s, cur, counts):
        s.cond(c.RUNNING, False, R_PENDING, counts)
    return s.decision()


def waiting_visible(s: PassState, cur: list[PodView], counts: str) -> bool:
    """A worker whose container cannot start (image pull, config error, crash loop) puts the
    kubelet's reason and message on the Running condition, with a Warning once per reason: a
    job stuck on an image is visible in seconds instead of a silent Pending."""
    stuck = next((p for p in cur if p.stuck is not None), None)
    if stuck is None or stuck.stuck is None:
        return False
    reason, detail = stuck.stuck
    message = f"pod {stuck.name}, {detail}"
    before = c.get(s.conds, c.RUNNING)
    if before is None or before.reason != reason:
        s.event("Warning", reason, message)
    s.cond(c.RUNNING, False, reason, f"{message}; {counts}")
    return True


def below_min(s: PassState, spec: api.TrainingJobSpec, running: int) -> Decision:
    """Fewer than minReplicas run after the job ran: wait for them, at most
    belowMinTimeoutSeconds. Also after a gang restart (once its backoff is over), so that a
    job whose new workers never start cannot sit in Restarting forever; but the Warning is
    only for a drop from Running: a restarting gang is expected to be short of workers."""
    w, timeout = spec.workers, spec.elastic.below_min_timeout_seconds
    since = c.parse_time(s.st.below_min_since)
    dropped = s.old.phase == "Running"
    if since is None:
        since = s.now
        s.st.below_min_since = c.rfc3339(s.now)
        if dropped:
            s.event("Warning", R_BELOW_MIN,
                    f"only {running} of at least {w.min} workers running; waiting up to {timeout}s for them")
    expiry = since + dt.timedelta(seconds=timeout)
    if s.now >= expiry:
        return finish(s, False, R_BELOW_MIN,
                      f"fewer than minReplicas ({w.min}) workers ran for {timeout}s (belowMinTimeoutSeconds)")
    s.at(expiry)
    s.st.phase = "Restarting"
    before = c.get(s.conds, c.RUNNING)
    if s.lost:  # the drop has a name: say which pod went, and how
        s.cond(c.RUNNING, False, R_WORKER_LOST, f"{'; '.join(s.lost)}; only {running} of at least {w.min} "
               "workers running")
    elif dropped or before is None or before.status == "True" or before.reason == R_BELOW_MIN:
        s.cond(c.RUNNING, False, R_BELOW_MIN, f"only {running} of at least {w.min} workers running")
    return s.decision()
