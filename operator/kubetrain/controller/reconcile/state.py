"""The vocabulary of a reconcile pass: settings, the job as read, the actions a pass asks for,
its Decision, and `PassState`, the one mutable state every step of a pass works on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetrain import api
from kubetrain.controller import conditions as c
from kubetrain.controller import names as n
from kubetrain.controller.builders import DEFAULT_TRAINER_IMAGE, JobRef
from kubetrain.controller.kueue import QUEUE_LABEL
from kubetrain.controller.observed import Observed, PodView
from kubetrain.controller.policy import Policy

TERMINAL = ("Succeeded", "Failed")

# Condition reasons (and Event reasons) the operator uses; tests and docs refer to these.
R_INVALID_SPEC = "InvalidSpec"
R_POLICY_VIOLATION = "PolicyViolation"  # the pass-through policy (controller/policy.py)
R_BACKOFF_LIMIT = "BackoffLimitExceeded"
R_DEADLINE = "DeadlineExceeded"
R_BELOW_MIN = "BelowMinReplicas"
R_COMPLETED = "Completed"
R_WORKER_FAILED = "WorkerFailed"
R_PREEMPTED = "Preempted"
R_RESCALED = "Rescaled"
R_SCALED = "Scaled"
R_WORKER_LOST = "WorkerLost"
R_RUNNING = "Running"
R_PENDING = "Pending"
R_RESTARTING = "Restarting"
R_SUSPENDED = "Suspended"
R_RESUMED = "Resumed"
R_SCHEDULED = "Scheduled"
R_UNSCHEDULABLE = "Unschedulable"
R_TTL = "TTLExpired"
R_WORKERS_CREATED = "WorkersCreated"
R_STALLED = "ProgressStalled"
# Kueue (reconcile/queueing.py): reasons of the Suspended condition and Events
R_QUEUED = "Queued"
R_ADMITTED = "Admitted"
R_EVICTED = "Evicted"


@dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (command-line flags of `kubetrain operator`)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 360.0
    resync_seconds: float = 60.0
    # The opt-in pass-through policy (service accounts, secrets, hostPath); None: off.
    policy: Policy | None = None


@dataclass(frozen=True)
class Job:
    """The job as read from the API server."""

    name: str
    namespace: str
    uid: str
    generation: int
    raw_spec: dict[str, Any]
    spec: api.TrainingJobSpec | None  # None when the spec does not parse
    status: api.TrainingJobStatus
    problems: tuple[str, ...] = ()
    queue: str | None = None  # label kueue.x-k8s.io/queue-name: run only once Kueue admits

    @property
    def ref(self) -> JobRef:
        return JobRef(self.name, self.namespace, self.uid)

    @classmethod
    def from_object(cls, obj: dict[str, Any], problems: tuple[str, ...] = ()) -> Job:
        meta = obj.get("metadata") or {}
        raw_spec = obj.get("spec") or {}
        spec = None
        if not problems:
            try:
                spec = api.TrainingJobSpec.model_validate(raw_spec)
            except ValueError as exc:
                problems = (str(exc),)
        try:
            status = api.TrainingJobStatus.model_validate(obj.get("status") or {})
        except ValueError:
            status = api.TrainingJobStatus()  # unreadable status: rebuilt from the children
        return cls(
            name=meta.get("name", ""), namespace=meta.get("namespace", ""), uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0), raw_spec=raw_spec, spec=spec, status=status,
            problems=tuple(problems), queue=((meta.get("labels") or {}).get(QUEUE_LABEL) or None),
        )


# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Create:
    """Create a child; AlreadyExists counts as done (the name is deterministic). `event` is
    posted only when the child was really created (a replacement names the pod it replaces)."""

    manifest: dict[str, Any]
    event: Event | None = None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class Update:
    """Merge-patch an existing child whose wanted content changed (the spec ConfigMap: new
    pods read the new spec; the PodGroup: a new minMember)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeleteChild:
    """Delete a child other than a pod (NotFound counts as done)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeletePod:
    """Delete a pod with its grace period (SIGTERM, checkpoint, exit); NotFound counts as done.
    `event` is posted only when the pod was still there."""

    name: str
    event: Event | None = None


@dataclass(frozen=True)
class PatchWorkloadStatus:
    """Merge-patch the status of the job's Kueue Workload (give the quota back after an
    eviction, mark it Finished); a conflict or NotFound is retried by the next pass."""

    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    """Delete the TrainingJob itself (ttlSecondsAfterFinished); children go with it."""


Action = Create | Update | DeleteChild | DeletePod | DeleteJob | PatchWorkloadStatus


@dataclass
class Decision:
    status: api.TrainingJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a time-based transition is due

    @property
    def pods_to_create(self) -> list[Create]:
        return [a for a in self.actions if isinstance(a, Create) and a.kind == "Pod"]

    @property
    def pods_to_delete(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, DeletePod)]


def backoff_seconds(failures: int, settings: Settings) -> float:
    """Exponential: base, 2·base, 4·base, … capped (failures counts from 1)."""
    return float(min(settings.backoff_base_seconds * 2 ** max(0, failures - 1), settings.backoff_max_seconds))


def workers_created_event(created: list[str]) -> Event:
    """The one Event for the pods a pass actually created (AlreadyExists ones excluded)."""
    shown = ", ".join(created[:8]) + (f" and {len(created) - 8} more" if len(created) > 8 else "")
    return Event("Normal", R_WORKERS_CREATED, f"created {len(created)} worker pod(s): {shown}")


# ------------------------------------------------------------------------------- the state


class PassState:
    """What one pass reads (job, observed children, now, settings) and what it builds up (the
    new status, actions, Events, wake-up times). The steps in the sibling modules are plain
    functions over it."""

    def __init__(self, job: Job, observed: Observed, now: dt.datetime, settings: Settings) -> None:
        self.job, self.observed, self.now, self.settings = job, observed, now, settings
        self.old = job.status
        self.st = job.status.model_copy(deep=True)
        self.conds: list[api.Condition] = list(self.st.conditions or [])
        self.restarts = self.st.restarts or api.RestartsStatus()
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.wake: list[dt.datetime] = []
        self.deleting: set[str] = set()
        self.lost: list[str] = []  # this pass's losses, in words, for the Running condition
        # A pod of a generation newer than the status knows means the status was lost or
        # rolled back: the pods are the truth.
        self.gen = max([self.st.restart_generation or 0, *(p.generation for p in observed.pods)])

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def cond(self, type_: api.ConditionType, status: bool, reason: str, message: str) -> None:
        self.conds = c.set_condition(self.conds, type_, status, reason, message, self.now, self.job.generation)

    def delete(self, pod: PodView, event: Event | None = None) -> None:
        if pod.deleting or pod.name in self.deleting:
            return
        self.deleting.add(pod.name)
        self.actions.append(DeletePod(pod.name, event))

    def live(self) -> list[PodView]:
        """Pods not being deleted (by anyone, or by this pass)."""
        return [p for p in self.observed.pods if not p.deleting and p.name not in self.deleting]

    def current(self) -> list[PodView]:
        """Live pods of the current restart generation."""
        return [p for p in self.live() if p.generation == self.gen]

    def at(self, t: dt.datetime | None) -> None:
        if t is not None:
            self.wake.append(t)

    def counts(self, desired: int) -> None:
        cur = [p for p in self.current() if p.index < desired]
        self.st.workers = api.WorkersStatus(
            desired=desired,
            active=sum(1 for p in cur if not p.finished),
            ready=sum(1 for p in cur if p.ready and not p.finished),
            failed=sum(1 for p in cur if p.phase == "Failed"),
        )

    def decision(self) -> Decision:
        self.st.conditions = self.conds or None
        self.st.restarts = self.restarts
        self.st.observed_generation = self.job.generation
        self.st.selector = n.selector(self.job.name)
        self.st.restart_generation = self.gen
        future = [t for t in self.wake if t > self.now]
        due = [t for t in self.wake if t <= self.now]
        requeue = 0.0 if due else (min(future) - self.now).total_seconds() if future else None
        return Decision(self.st, self.actions, self.events, requeue)
