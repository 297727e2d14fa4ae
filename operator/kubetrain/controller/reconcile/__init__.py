"""The decision function: (job, observed children, now) → actions + new status + Events.

Pure and level-based: it looks only at the job as stored (spec and status) and at the children
as listed now, never at what happened before. The caller writes the new status first (with the
job's resourceVersion as precondition) and only then executes the actions, so whatever a pass
decides is recorded before it has any effect; a pass cut short by a crash is simply decided
again, identically, by the next one.

One pass state (`state.PassState`), and plain functions over it, one module per concern:
`lifecycle` (the pass in order of precedence, suspension, deadline, phase), `failures`
(exit-code outcomes, gang restarts with backoff), `workers` (children, losses, scaling,
creation), `gang` (scheduling and its timeout), `progress` (status.progress), `watchdog`
(stalls), `terminal` (Succeeded/Failed, clean-up, TTL).

Counting without double counting: a retryable failure, a preemption (exit 75) and a change of
the gang shape restart the whole gang by incrementing `status.restartGeneration` in the same
status write that counts the restart. Pods of older generations are then only deleted, never
counted again. Losing single pods (deleted, evicted, node gone) and elastic scaling within
[min, max] replace or add/remove just those workers: survivors are never recreated.

Phases: Pending → Running ⇄ Restarting → Succeeded | Failed, and Suspended from any
non-terminal phase. Every decision sets a condition reason and emits an Event; the table is in
docs/operator.md (a test per row in tests/unit/test_reconcile.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetrain import api
from kubetrain.controller.observed import Observed
from kubetrain.controller.reconcile.lifecycle import run
from kubetrain.controller.reconcile.state import (
    R_ADMITTED,
    R_BACKOFF_LIMIT,
    R_BELOW_MIN,
    R_COMPLETED,
    R_DEADLINE,
    R_EVICTED,
    R_INVALID_SPEC,
    R_PENDING,
    R_POLICY_VIOLATION,
    R_PREEMPTED,
    R_QUEUED,
    R_RESCALED,
    R_RESTARTING,
    R_RESUMED,
    R_RUNNING,
    R_SCALED,
    R_SCHEDULED,
    R_STALLED,
    R_SUSPENDED,
    R_TTL,
    R_UNSCHEDULABLE,
    R_WORKER_FAILED,
    R_WORKER_LOST,
    R_WORKERS_CREATED,
    TERMINAL,
    Action,
    Create,
    Decision,
    DeleteChild,
    DeleteJob,
    DeletePod,
    Event,
    Job,
    PassState,
    PatchWorkloadStatus,
    Settings,
    Update,
    backoff_seconds,
    workers_created_event,
)
from kubetrain.controller.reconcile.terminal import finish

__all__ = [
    "R_ADMITTED", "R_BACKOFF_LIMIT", "R_BELOW_MIN", "R_COMPLETED", "R_DEADLINE", "R_EVICTED", "R_INVALID_SPEC",
    "R_PENDING", "R_POLICY_VIOLATION", "R_PREEMPTED", "R_QUEUED", "R_RESCALED", "R_RESTARTING", "R_RESUMED", "R_RUNNING", "R_SCALED", "R_SCHEDULED", "R_STALLED", "R_SUSPENDED",
    "R_TTL", "R_UNSCHEDULABLE", "R_WORKERS_CREATED", "R_WORKER_FAILED", "R_WORKER_LOST", "TERMINAL", "Action",
    "Create", "Decision", "DeleteChild", "DeleteJob", "DeletePod", "Event", "Job", "PatchWorkloadStatus", "Settings",
    "Update",
    "backoff_seconds", "reconcile", "spec_problems", "workers_created_event",
]


def reconcile(job: Job, observed: Observed, now: dt.datetime, settings: Settings | None = None) -> Decision:
    """Decide one pass for `job` given its children as listed now."""
    s = PassState(job, observed, now, settings or Settings())
    policy = s.settings.policy
    if policy is not None and job.spec is not None and s.st.phase not in TERMINAL and not job.problems:
        # Before anything is created: a job beyond the pass-through policy gets no pod.
        violations = policy.violations(job.spec)
        if violations:
            return finish(s, False, R_POLICY_VIOLATION, "denied by the pass-through policy: " + "; ".join(violations))
    return run(s)


def spec_problems(obj: dict[str, Any]) -> tuple[str, ...]:
    """What the API server could not reject: the models' checks and the semantic checks of
    `kubetrain validate` (e.g. whether a DeepSpeed config maps onto the typed fields). The CRD's
    CEL rules are left out: the API server enforced them on admission, and evaluating them in
    Python costs a hundred times more than all the rest."""
    from kubetrain.api import validate

    problems = validate.model_problems(obj)
    if not problems:
        spec = api.TrainingJob.model_validate(obj).spec
        for check in validate.SEMANTIC_CHECKS:
            problems += check(spec, obj.get("spec") or {})
    return tuple(dict.fromkeys(str(p) for p in problems))
