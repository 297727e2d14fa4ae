"""Kueue: a job labelled kueue.x-k8s.io/queue-name runs only while its Workload is admitted.

`gate` comes right after the spec checks of a pass. Not admitted (no Workload yet, waiting for
quota, or evicted): the job is Suspended with the Suspended condition's reason Queued,
Preempted or Evicted and a message naming the queue, the ClusterQueue and Kueue's own words;
its workers are deleted (SIGTERM, checkpoint, exit 75) exactly as for runPolicy.suspend, and
only once they are all gone is an evicted Workload's quota given back (release). Admitted: the
pass goes on with the admitted spec (count, the flavors' node labels and tolerations);
a re-admission resumes from the checkpoint like an unsuspend. `mark_finished` tells Kueue a
finished job's quota is free.
"""

from __future__ import annotations

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller import kueue
from kubetrain.controller.builders import build_pod
from kubetrain.controller.reconcile.state import (
    R_ADMITTED,
    R_EVICTED,
    R_PREEMPTED,
    R_QUEUED,
    Create,
    Decision,
    PassState,
    PatchWorkloadStatus,
)

STOP_REASONS = {"Preempted": R_PREEMPTED, "Evicted": R_EVICTED}


def workload_manifest(s: PassState, spec: api.TrainingJobSpec, queue: str) -> Create:
    priority = s.observed.queue.priority if s.observed.queue is not None else None
    pod = build_pod(s.job.ref, spec, 0, s.gen, 0, s.settings.trainer_image)
    return Create(kueue.build_workload(s.job.ref, spec, queue, pod, priority))


def gate(s: PassState, spec: api.TrainingJobSpec) -> Decision | api.TrainingJobSpec:
    """A Decision while the job may not run; else the spec to run it with."""
    queue = s.job.queue
    if queue is None:
        return spec
    seen = s.observed.queue
    wl = seen.workload if seen is not None else None
    if wl is not None and wl.owner_uid and wl.owner_uid != s.job.uid:
        wl = None  # a deleted namesake's, still being collected: ours has another name
    if wl is None or wl.finished:
        s.actions.append(workload_manifest(s, spec, queue))
        return hold(s, spec, R_QUEUED, kueue.describe(None, queue, seen.cluster_queue if seen else None))
    where = kueue.describe(wl, queue, seen.cluster_queue if seen else None)
    if wl.evicted and wl.quota_reserved:  # Evicted stays True after the release (below) until
        # Kueue reserves quota again; once released the job waits in its queue like any other
        decision = hold(s, spec, STOP_REASONS[wl.stop_reason], where)
        if not s.observed.pods:
            # every worker is gone (checkpointed and exited): the quota goes back to Kueue
            decision.actions.append(PatchWorkloadStatus(wl.name, kueue.release_patch(wl, s.now)))
        return decision
    if not wl.admitted:
        return hold(s, spec, R_QUEUED, where)
    admitted = kueue.admitted_spec(spec, wl)
    if c.is_true(s.conds, c.SUSPENDED) or c.get(s.conds, c.SUSPENDED) is None:
        count = admitted.workers.replicas
        flavors = f", flavor {', '.join(wl.flavors)}" if wl.flavors else ""
        message = (f"admitted by ClusterQueue {wl.cluster_queue} (queue {queue}) with {count} of "
                   f"{spec.workers.replicas} workers{flavors}")
        was_suspended = c.is_true(s.conds, c.SUSPENDED) and s.st.start_time is not None  # it ran before
        s.cond(c.SUSPENDED, False, R_ADMITTED, message)
        s.event("Normal", R_ADMITTED, message + ("; resuming from the last checkpoint" if was_suspended else ""))
        if s.st.phase == "Suspended":
            s.st.phase = "Pending"
    return admitted


def hold(s: PassState, spec: api.TrainingJobSpec, reason: str, message: str) -> Decision:
    """Suspended while Kueue has not admitted the job: no worker runs, the status is kept."""
    for p in s.live():
        s.delete(p)
    before = c.get(s.conds, c.SUSPENDED)
    if s.st.phase != "Suspended" or before is None or before.reason != reason:
        stopping = "; workers checkpoint and stop" if s.observed.pods else ""
        s.event("Warning" if reason in (R_PREEMPTED, R_EVICTED) else "Normal", reason, f"{message}{stopping}")
    s.st.phase = "Suspended"
    s.cond(c.SUSPENDED, True, reason, message)
    s.cond(c.RUNNING, False, reason, "the job waits for Kueue's admission")
    s.st.backoff_until = None
    s.st.below_min_since = None
    s.st.world_size = 0
    s.counts(spec.workers.replicas)
    return s.decision()


def mark_finished(s: PassState) -> None:
    """A finished job's Workload is marked Finished (Kueue frees its quota)."""
    seen = s.observed.queue
    wl = seen.workload if seen is not None else None
    if s.job.queue is None or wl is None or wl.finished or wl.owner_uid not in ("", s.job.uid):
        return
    succeeded = s.st.phase == "Succeeded"
    cond = c.get(s.conds, c.SUCCEEDED if succeeded else c.FAILED)
    message = cond.message if cond is not None and cond.message else f"the job {s.st.phase}"
    s.actions.append(PatchWorkloadStatus(wl.name, kueue.finish_patch(wl, succeeded, message, s.now)))
