"""The decision function: (job, observed children, now) → actions + new status + Events.

Pure and level-based: it looks only at the job as stored (spec and status) and at the children
as listed now, never at what happened before. The caller writes the new status first (with the
job's resourceVersion as precondition) and only then executes the actions, so whatever a pass
decides is recorded before it has any effect; a pass cut short by a crash is simply decided
again, identically, by the next one.

Counting without double counting: a retryable failure, a preemption (exit 75) and a change of
the gang shape restart the whole gang by incrementing `status.restartGeneration` in the same
status write that counts the restart. Pods of older generations are then only deleted, never
counted again. Losing single pods (deleted, evicted, node gone) and elastic scaling within
[min, max] replace or add/remove just those workers: survivors are never recreated.

Phases: Pending → Running ⇄ Restarting → Succeeded | Failed, and Suspended from any
non-terminal phase. Every decision sets a condition reason and emits an Event:

  what happened                     phase        condition (status, reason)           Event
  workers created / replaced        -            -                                    WorkersCreated
  >= minReplicas workers Running    Running      Running (True, Running)              Running
  a worker cannot be placed         -            Scheduled (False, Unschedulable)     Warning Unschedulable
  replicas changed within [min,max] -            -                                    Scaled (restarts.rescale)
  --nnodes changed (min/max edited) Restarting   Running (False, Rescaled)            Rescaled (restarts.rescale)
  pod evicted / node lost           -            -                                    Warning WorkerLost
  exit other than 0/64/65/75        Restarting   Running (False, WorkerFailed)        Warning WorkerFailed
  ... backoffLimit already used     Failed       Failed (True, BackoffLimitExceeded)  Warning BackoffLimitExceeded
  exit 75 (preempted)               Restarting   Running (False, Preempted)           Preempted (not counted)
  exit 64 / 65                      Failed       Failed (True, <trainer's reason>)    Warning <same reason>
  fewer than minReplicas running    Restarting   Running (False, BelowMinReplicas)    Warning BelowMinReplicas
  ... for belowMinTimeoutSeconds    Failed       Failed (True, BelowMinReplicas)      Warning BelowMinReplicas
  activeDeadlineSeconds passed      Failed       Failed (True, DeadlineExceeded)      Warning DeadlineExceeded
  a worker exits 0                  Succeeded    Succeeded (True, Completed)          Completed
  spec.runPolicy.suspend: true      Suspended    Suspended (True, Suspended)          Suspended
  ... set back to false             Pending      Suspended (False, Resumed)           Resumed
  ttlSecondsAfterFinished passed    (deleted)    -                                    TTLExpired
  spec invalid (e.g. DeepSpeed)     Failed       Failed (True, InvalidSpec)           Warning InvalidSpec
  gang not placed in time (retry)   Restarting   Scheduled (False, Unschedulable)     Warning Unschedulable
  ... maxAttempts reached           Failed       Failed (True, Unschedulable)         Warning Unschedulable
  step stalled, watchdog restart    Restarting   Running (False, ProgressStalled)     Warning ProgressStalled
  step stalled, watchdog fail       Failed       Failed (True, ProgressStalled)       Warning ProgressStalled

Progress: the latest /progress reading (polled by the handlers, never inside a pass) is written
to status.progress; a reading no newer than the status leaves it as it is, so a worker that
stops answering leaves the last value with its timestamp.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetrain import api
from kubetrain.api.constants import PERMANENT_REASON_BY_CODE
from kubetrain.controller import conditions as c
from kubetrain.controller import names as n
from kubetrain.controller.builders import (
    DEFAULT_TRAINER_IMAGE,
    NATIVE_GANG,
    JobRef,
    build_config_map,
    build_pod,
    build_pod_group,
    build_service,
    gang_mode,
    nnodes,
)
from kubetrain.controller.observed import Observed, PodView

TERMINAL = ("Succeeded", "Failed")
_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")

# Condition reasons (and Event reasons) the operator uses; tests and docs refer to these.
R_INVALID_SPEC = "InvalidSpec"
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


@dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (command-line flags of `kubetrain operator`)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 360.0
    resync_seconds: float = 60.0


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
            problems=tuple(problems),
        )


# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Create:
    """Create a child; AlreadyExists counts as done (the name is deterministic)."""

    manifest: dict[str, Any]

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
class DeleteJob:
    """Delete the TrainingJob itself (ttlSecondsAfterFinished); children go with it."""


Action = Create | Update | DeleteChild | DeletePod | DeleteJob


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


# ------------------------------------------------------------------------------------ the pass


class _Pass:
    """One reconcile pass; methods are the steps, in order of precedence."""

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
        pods = observed.pods
        # A pod of a generation newer than the status knows means the status was lost or
        # rolled back: the pods are the truth.
        self.gen = max([self.st.restart_generation or 0, *(p.generation for p in pods)])

    # -------------------------------------------------------------------- helpers

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

    def at(self, t: dt.datetime | None) -> None:
        if t is not None:
            self.wake.append(t)

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

    def counts(self, desired: int) -> None:
        cur = [p for p in self.live() if p.generation == self.gen and p.index < desired]
        self.st.workers = api.WorkersStatus(
            desired=desired,
            active=sum(1 for p in cur if not p.finished),
            ready=sum(1 for p in cur if p.ready and not p.finished),
            failed=sum(1 for p in cur if p.phase == "Failed"),
        )

    # ------------------------------------------------------------------- terminal

    def finish(self, succeeded: bool, reason: str, message: str) -> Decision:
        """Enter Succeeded/Failed (once; the event fires on the transition only)."""
        if self.st.phase not in TERMINAL:
            self.st.phase = "Succeeded" if succeeded else "Failed"
            self.st.completion_time = c.rfc3339(self.now)
            self.st.backoff_until = None
            self.st.below_min_since = None
            self.st.world_size = 0
            self.cond(c.SUCCEEDED if succeeded else c.FAILED, True, reason, message)
            self.cond(c.RUNNING, False, reason, message)
            self.event("Normal" if succeeded else "Warning", reason, message)
        return self.finished()

    def finished(self) -> Decision:
        """A finished job: clean pods per cleanPodPolicy, delete the job after its TTL."""
        policy = self._run_policy()
        for p in self.live():
            if policy.clean_pod_policy == "All" or (policy.clean_pod_policy == "Running" and not p.finished):
                self.delete(p)
        desired = self.job.spec.workers.replicas if self.job.spec else 0
        self.counts(desired)
        done = c.parse_time(self.st.completion_time) or self.now
        if policy.ttl_seconds_after_finished is not None:
            expiry = done + dt.timedelta(seconds=policy.ttl_seconds_after_finished)
            if self.now >= expiry:
                self.actions.append(DeleteJob())
                self.event("Normal", R_TTL, f"deleting the job {policy.ttl_seconds_after_finished}s after it finished")
            else:
                self.at(expiry)
        return self.decision()

    def _run_policy(self) -> api.RunPolicySpec:
        if self.job.spec is not None:
            return self.job.spec.run_policy
        try:  # an invalid spec may still have a readable run policy
            return api.RunPolicySpec.model_validate(self.job.raw_spec.get("runPolicy") or {})
        except ValueError:
            return api.RunPolicySpec()

    # ---------------------------------------------------------------------- run

    def run(self) -> Decision:
        if self.st.phase in TERMINAL:
            return self.finished()
        if self.job.problems or self.job.spec is None:
            problems = "; ".join(self.job.problems) or "the spec does not parse"
            return self.finish(False, R_INVALID_SPEC, f"invalid spec: {problems}")
        spec = self.job.spec
        if spec.run_policy.suspend:
            return self.suspend(spec)
        self.resume_if_suspended()
        if self.st.start_time is None:
            self.st.start_time = c.rfc3339(self.now)
        self.record_progress(spec)

        outcome = self.success(spec) or self.deadline(spec) or self.failures(spec)
        if outcome is not None:
            return outcome
        self.children()
        desired = max(spec.workers.min, min(spec.workers.max, spec.workers.replicas))
        if self.shape_changed(spec):
            # torchrun agents built for another --nnodes cannot share a rendezvous.
            return self.restart("rescale", "Normal", R_RESCALED,
                                f"the gang's shape changed to --nnodes {nnodes(spec)}: restarting all workers",
                                desired)
        self.replace_lost()
        self.scale(desired)
        self.create_missing(spec, desired)
        self.counts(desired)
        return self.phase(spec, desired)

    # --------------------------------------------------------------- suspension

    def suspend(self, spec: api.TrainingJobSpec) -> Decision:
        """Kueue's contract: delete the workers (each gets its grace period to checkpoint),
        keep the status; unsuspending recreates them."""
        for p in self.live():
            self.delete(p)
        if self.st.phase != "Suspended":
            self.st.phase = "Suspended"
            self.event("Normal", R_SUSPENDED, "job suspended: workers checkpoint and stop; status kept")
        self.cond(c.SUSPENDED, True, R_SUSPENDED, "spec.runPolicy.suspend is true")
        self.cond(c.RUNNING, False, R_SUSPENDED, "the job is suspended")
        self.st.backoff_until = None
        self.st.below_min_since = None
        self.st.world_size = 0
        self.counts(spec.workers.replicas)
        return self.decision()

    def resume_if_suspended(self) -> None:
        if c.is_true(self.conds, c.SUSPENDED):
            self.cond(c.SUSPENDED, False, R_RESUMED, "spec.runPolicy.suspend is false")
            self.event("Normal", R_RESUMED, "job resumed: recreating workers")
            self.st.phase = "Pending"

    # ----------------------------------------------------------------- deadline

    def deadline(self, spec: api.TrainingJobSpec) -> Decision | None:
        limit = spec.run_policy.active_deadline_seconds
        if limit is None:
            return None
        # Like a batch/v1 Job, the clock restarts on resume: suspended time is not running time.
        start = c.parse_time(self.st.start_time) or self.now
        resumed = c.get(self.conds, c.SUSPENDED)
        if resumed is not None and resumed.status == "False":
            start = max(start, c.parse_time(resumed.last_transition_time) or start)
        expiry = start + dt.timedelta(seconds=limit)
        if self.now >= expiry:
            return self.finish(False, R_DEADLINE, f"the job ran longer than activeDeadlineSeconds ({limit}s)")
        self.at(expiry)
        return None

    # -------------------------------------------------------------- pod outcomes

    def outcomes(self, spec: api.TrainingJobSpec, outcome: str) -> list[PodView]:
        """Finished pods of the current generation (scaled-away indices excluded) by outcome."""
        return sorted(
            (p for p in self.live() if p.generation == self.gen and p.index < spec.workers.replicas
             and p.outcome == outcome),
            key=lambda p: (p.index, p.incarnation),
        )

    def success(self, spec: api.TrainingJobSpec) -> Decision | None:
        """The trainer exits 0 only when training is done and the final checkpoint committed,
        so one worker's success is the job's; the rest are cleaned per cleanPodPolicy."""
        done = self.outcomes(spec, "succeeded")
        if done:
            self.record_final_progress(done[0])
            return self.finish(True, R_COMPLETED, f"training finished: pod {done[0].name} exited 0")
        return None

    def failures(self, spec: api.TrainingJobSpec) -> Decision | None:
        """Failed pods of the current generation, by precedence: permanent, retryable, preempted."""
        by = {o: self.outcomes(spec, o) for o in ("permanent", "retryable", "preempted")}
        if by["permanent"]:
            p = by["permanent"][0]
            self.record_failure(p)
            reason = p.reason if _CAMEL.match(p.reason or "") and p.reason not in ("Error", "Completed") \
                else PERMANENT_REASON_BY_CODE.get(p.exit_code or 0, "PermanentError")
            return self.finish(False, reason, f"pod {p.name} exited {p.exit_code}: {p.message or p.reason}")
        if by["retryable"]:
            p = by["retryable"][0]
            self.record_failure(p)
            limit = spec.run_policy.backoff_limit
            done = self.restarts.failure
            what = f"pod {p.name} exited {p.exit_code}" + (f" ({p.reason})" if p.reason else "") + \
                (f": {p.message}" if p.message else "")
            if done >= limit:
                return self.finish(False, R_BACKOFF_LIMIT, f"{what}; backoffLimit ({limit}) reached")
            delay = backoff_seconds(done + 1, self.settings)
            return self.restart("failure", "Warning", R_WORKER_FAILED,
                                f"{what}; restart {done + 1} of {limit} in {delay:.0f}s", spec.workers.replicas,
                                delay)
        if by["preempted"]:
            p = by["preempted"][0]
            self.record_failure(p)
            return self.restart("preemption", "Normal", R_PREEMPTED,
                                f"pod {p.name} was preempted after a checkpoint (exit 75): restarting, "
                                f"not counted toward backoffLimit", spec.workers.replicas)
        return None

    def record_failure(self, p: PodView) -> None:
        self.st.last_failure = api.FailureStatus(
            pod=p.name, exit_code=p.exit_code, reason=p.reason, message=p.message[-1024:], time=c.rfc3339(self.now)
        )

    def restart(
        self, cause: str, type_: Literal["Normal", "Warning"], reason: str, message: str, desired: int,
        delay: float = 0.0,
    ) -> Decision:
        """Restart the whole gang: a new generation, counted under `cause`, after `delay`."""
        setattr(self.restarts, cause, getattr(self.restarts, cause) + 1)
        self.restarts.total += 1
        self.gen += 1
        self.st.restart_generation = self.gen
        self.st.below_min_since = None
        self.st.world_size = 0
        if delay > 0:
            # Rounded up to the second the status can hold: a stored time cut short would cut
            # the backoff short.
            until = c.ceil_seconds(self.now + dt.timedelta(seconds=delay))
            self.st.backoff_until = c.rfc3339(until)
            self.at(until)
        else:
            self.st.backoff_until = None
            self.at(self.now)  # create the new generation right after this status is written
        self.st.phase = "Restarting"
        self.cond(c.RUNNING, False, reason, message)
        self.event(type_, reason, message)
        self.drop_old_generations()
        self.counts(desired)
        return self.decision()

    def drop_old_generations(self) -> None:
        """Older generations go, except the pod of the last failure (kept for `kubectl logs`;
        finished, it holds no resources)."""
        keep = self.st.last_failure.pod if self.st.last_failure else None
        for p in self.live():
            if p.generation < self.gen and not (p.name == keep and p.finished):
                self.delete(p)

    # ------------------------------------------------------------------ children

    def children(self) -> None:
        ref = self.job.ref
        if not self.observed.service:
            self.actions.append(Create(build_service(ref)))
        cm = build_config_map(ref, self.job.raw_spec)
        want = cm["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH]
        if self.observed.config_map_hash is None:
            self.actions.append(Create(cm))
        elif self.observed.config_map_hash != want:
            self.actions.append(Update(cm))
        assert self.job.spec is not None
        group = build_pod_group(ref, self.job.spec)
        if group is not None:
            want = group["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH]
            if self.observed.pod_group_hash is None:
                self.actions.append(Create(group))
            elif self.observed.pod_group_hash != want:
                # Kubernetes' PodGroup policy is immutable: replace it (created again next pass).
                native = gang_mode(self.job.spec) == NATIVE_GANG
                self.actions.append(DeleteChild(group) if native else Update(group))
        self.drop_old_generations()

    def replace_lost(self) -> None:
        """A pod killed from outside (evicted, node lost) is deleted and, below, replaced
        under a new name: never blocked by the old pod stuck Terminating."""
        for p in self.live():
            if p.generation == self.gen and p.outcome == "lost":
                why = p.reason or "killed"
                detail = f": {p.message}" if p.message else ""
                self.delete(p, Event("Warning", R_WORKER_LOST, f"pod {p.name} was lost ({why}{detail}); replacing it"))

    def scale(self, desired: int) -> None:
        """Elastic scaling within [min, max]: the highest indices go or come; survivors stay.
        Counted as a rescale restart only when it interrupts training (torchrun re-rendezvous)."""
        before = self.old.workers.desired if self.old.workers else 0
        if before and desired != before and self.old.phase == "Running":
            self.restarts.rescale += 1
            self.restarts.total += 1
            verb = "up" if desired > before else "down"
            self.event("Normal", R_SCALED, f"scaling {verb} from {before} to {desired} workers")
        for p in self.live():
            if p.generation == self.gen and p.index >= desired:
                self.delete(p)

    def shape_changed(self, spec: api.TrainingJobSpec) -> bool:
        want = nnodes(spec)
        return any(p.nnodes and p.nnodes != want for p in self.live() if p.generation == self.gen)

    def create_missing(self, spec: api.TrainingJobSpec, desired: int) -> None:
        until = c.parse_time(self.st.backoff_until)
        if until is not None and self.now < until:
            self.at(until)
            return
        self.st.backoff_until = None
        occupied = {p.index for p in self.live() if p.generation == self.gen and not p.finished}
        for index in range(desired):
            if index in occupied:
                continue
            previous = [p.incarnation for p in self.observed.pods if p.index == index and p.generation == self.gen]
            incarnation = max(previous) + 1 if previous else 0
            pod = build_pod(self.job.ref, spec, index, self.gen, incarnation, self.settings.trainer_image)
            self.actions.append(Create(pod))

    # ------------------------------------------------------------ progress, stall

    def record_final_progress(self, pod: PodView) -> None:
        """The last poll may predate the last steps: the launcher's termination record has the
        final step and loss, so a finished job shows where training really ended."""
        if pod.final_step is None or self.st.phase in TERMINAL:
            return
        old = self.st.progress or api.ProgressStatus()
        if old.step is not None and old.step >= pod.final_step:
            return
        stamp = c.rfc3339(self.now)
        self.st.progress = old.model_copy(update={
            "step": pod.final_step,
            "loss": pod.final_loss if pod.final_loss is not None else old.loss,
            "updated_at": stamp,
            "step_advanced_at": stamp,
        })

    def record_progress(self, spec: api.TrainingJobSpec) -> None:
        """Write the latest /progress reading into status.progress, if it is newer."""
        reading = self.observed.progress
        if reading is None:
            return
        old = self.st.progress or api.ProgressStatus()
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
        self.st.progress = api.ProgressStatus(
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

    def watchdog(self, spec: api.TrainingJobSpec, desired: int) -> Decision | None:
        """The step has not advanced for stallSeconds while Running: restart the gang (from
        its last checkpoint) or fail, per watchdog.action. The clock starts when the gang is
        Running again, so a restart or a resume gets the full time to show progress."""
        wd = spec.run_policy.watchdog
        if wd is None or wd.stall_seconds <= 0:
            return None
        running = c.get(self.conds, c.RUNNING)
        since = c.parse_time(running.last_transition_time if running else None) or self.now
        progress = self.st.progress
        advanced = c.parse_time(progress.step_advanced_at if progress else None)
        if advanced is not None and advanced > since:
            since = advanced
        expiry = since + dt.timedelta(seconds=wd.stall_seconds)
        if self.now < expiry:
            self.at(expiry)
            return None
        step = progress.step if progress and progress.step is not None else None
        what = f"step {step} has not advanced" if step is not None else "no training progress was reported"
        message = f"{what} for {wd.stall_seconds}s (watchdog.stallSeconds)"
        if wd.action == "fail":
            return self.finish(False, R_STALLED, message)
        return self.restart("stall", "Warning", R_STALLED, f"{message}: restarting the workers from their last "
                            "checkpoint", desired)

    # --------------------------------------------------------------------- phase

    def phase(self, spec: api.TrainingJobSpec, desired: int) -> Decision:
        w = spec.workers
        cur = [p for p in self.live() if p.generation == self.gen and p.index < desired and not p.finished]
        running = [p for p in cur if p.phase == "Running"]
        self.scheduled(cur, w.min, desired)
        released = self.gang_timeout(spec, cur, desired)
        if released is not None:
            return released

        if len(running) >= w.min:
            if self.st.phase != "Running":
                self.event("Normal", R_RUNNING, f"{len(running)} of {desired} workers running")
            self.st.phase = "Running"
            self.st.below_min_since = None
            self.st.world_size = min(len(running), w.max) * w.procs
            self.cond(c.RUNNING, True, R_RUNNING,
                      f"{len(running)} of {desired} workers running, world size {self.st.world_size}")
            return self.watchdog(spec, desired) or self.decision()

        self.st.world_size = 0
        in_backoff = self.st.backoff_until is not None
        if self.st.phase in ("Running", "Restarting") and not in_backoff:
            return self.below_min(spec, len(running))
        if self.st.phase == "Restarting":
            # Backing off after a restart: keep the restart's reason on the Running condition.
            if c.is_true(self.conds, c.RUNNING):
                self.cond(c.RUNNING, False, R_RESTARTING, "the workers are being restarted")
            return self.decision()
        self.st.phase = "Pending"
        self.cond(c.RUNNING, False, R_PENDING, f"{len(running)} of {desired} workers running, "
                  f"training starts with {w.min}")
        return self.decision()

    def below_min(self, spec: api.TrainingJobSpec, running: int) -> Decision:
        """Fewer than minReplicas run after the job ran: wait for them, at most
        belowMinTimeoutSeconds. Also after a gang restart (once its backoff is over), so that a
        job whose new workers never start cannot sit in Restarting forever; but the Warning is
        only for a drop from Running: a restarting gang is expected to be short of workers."""
        w, timeout = spec.workers, spec.elastic.below_min_timeout_seconds
        since = c.parse_time(self.st.below_min_since)
        dropped = self.old.phase == "Running"
        if since is None:
            since = self.now
            self.st.below_min_since = c.rfc3339(self.now)
            if dropped:
                self.event("Warning", R_BELOW_MIN,
                           f"only {running} of at least {w.min} workers running; waiting up to {timeout}s for them")
        expiry = since + dt.timedelta(seconds=timeout)
        if self.now >= expiry:
            return self.finish(False, R_BELOW_MIN,
                               f"fewer than minReplicas ({w.min}) workers ran for {timeout}s (belowMinTimeoutSeconds)")
        self.at(expiry)
        self.st.phase = "Restarting"
        before = c.get(self.conds, c.RUNNING)
        if dropped or before is None or before.status == "True" or before.reason == R_BELOW_MIN:
            self.cond(c.RUNNING, False, R_BELOW_MIN, f"only {running} of at least {w.min} workers running")
        return self.decision()

    def scheduled(self, cur: list[PodView], minimum: int, desired: int) -> None:
        if not cur:
            return
        placed = sum(1 for p in cur if p.node)
        stuck = next((p for p in cur if p.unschedulable), None)
        if placed >= minimum and stuck is None:
            self.cond(c.SCHEDULED, True, R_SCHEDULED, f"{placed} of {desired} workers scheduled")
        elif stuck is not None:
            before = c.get(self.conds, c.SCHEDULED)
            if before is None or before.reason != R_UNSCHEDULABLE:
                self.event("Warning", R_UNSCHEDULABLE, f"pod {stuck.name}: {stuck.unschedulable}")
            self.cond(c.SCHEDULED, placed >= minimum, R_UNSCHEDULABLE,
                      f"{placed} of {desired} workers scheduled; pod {stuck.name}: {stuck.unschedulable}")
        else:
            self.cond(c.SCHEDULED, False, R_PENDING, f"{placed} of {desired} workers scheduled, {minimum} needed")


    def gang_timeout(self, spec: api.TrainingJobSpec, cur: list[PodView], desired: int) -> Decision | None:
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
        start = min(starts) if starts else self.now
        cond = c.get(self.old.conditions or [], c.SCHEDULED)  # as it was before this pass
        since = c.parse_time(cond.last_transition_time) if cond is not None and cond.status == "False" else None
        if since is not None and since > start:
            start = since  # scheduled once, then lost workers: the clock starts at the drop
        expiry = start + dt.timedelta(seconds=sched.scheduling_timeout_seconds)
        if self.now < expiry:
            self.at(expiry)
            return None
        attempts = (self.st.scheduling_attempts or 0) + 1
        self.st.scheduling_attempts = attempts
        what = (f"only {placed} of at least {w.min} workers were scheduled within "
                f"{sched.scheduling_timeout_seconds}s (attempt {attempts} of {sched.max_attempts})")
        self.cond(c.SCHEDULED, False, R_UNSCHEDULABLE, what)
        if attempts >= sched.max_attempts:
            return self.finish(False, R_UNSCHEDULABLE, f"{what}: giving up")
        delay = backoff_seconds(attempts, self.settings)
        return self.restart("unschedulable", "Warning", R_UNSCHEDULABLE,
                            f"{what}: releasing every worker, retrying in {delay:.0f}s", desired, delay)


def reconcile(job: Job, observed: Observed, now: dt.datetime, settings: Settings | None = None) -> Decision:
    """Decide one pass for `job` given its children as listed now."""
    return _Pass(job, observed, now, settings or Settings()).run()


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
