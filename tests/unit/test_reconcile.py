"""reconcile(job, observed, now) → actions + status + Events: a table of single passes with a
fake clock, then multi-pass scenarios against a simulated cluster (including a crash between
the status write and the actions, and replays)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from kubetrain.api.progress import ProgressReport
from kubetrain.controller import names as n
from kubetrain.controller.builders import build_config_map
from kubetrain.controller.kubeio import merge_patch
from kubetrain.controller.observed import Observed, PodView, ProgressReading, pod_view
from kubetrain.controller.progress import ProgressPoller, Target, target_of
from kubetrain.controller.reconcile import (
    Create,
    Decision,
    DeleteJob,
    DeletePod,
    Job,
    Settings,
    Update,
    backoff_seconds,
    reconcile,
)
from kubetrain.controller.workqueue import RetryDelays, WorkQueue

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
SETTINGS = Settings(trainer_image="trainer:test", backoff_base_seconds=10, backoff_max_seconds=60)


def ts(seconds: float = 0) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_job(spec: dict[str, Any], status: dict[str, Any] | None = None, problems: tuple[str, ...] = (),
             generation: int = 1) -> Job:
    obj = {"metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1", "generation": generation},
           "spec": spec, "status": status or {}}
    return Job.from_object(obj, problems)


def cm_hash(spec: dict[str, Any]) -> str:
    job = make_job(spec)
    return str(build_config_map(job.ref, spec)["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH])


def pod(index: int, gen: int = 0, inc: int = 0, phase: str = "Running", **kw: Any) -> PodView:
    defaults: dict[str, Any] = {"ready": phase == "Running", "node": "node-a" if phase != "Pending" else None}
    if "nnodes" not in kw:
        kw["nnodes"] = "2:2"
    return PodView(name=n.pod_name("demo", index, gen, inc), index=index, generation=gen, incarnation=inc,
                   phase=phase, **{**defaults, **kw})


def failed(index: int, code: int | None, gen: int = 0, inc: int = 0, **kw: Any) -> PodView:
    return pod(index, gen, inc, phase="Failed", exit_code=code, ready=False, **kw)


def name(index: int, gen: int = 0, inc: int = 0) -> str:
    return n.pod_name("demo", index, gen, inc)


TWO = {"workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 3}}
ELASTIC = {"workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4}}
RUNNING = {"phase": "Running", "startTime": ts(-100), "restartGeneration": 0,
           "workers": {"desired": 2, "active": 2, "ready": 2, "failed": 0},
           "conditions": [{"type": "Running", "status": "True", "reason": "Running", "message": "",
                           "lastTransitionTime": ts(-90)}]}


READING = ProgressReading(data=ProgressReport.model_validate({
                              "step": 42, "maxSteps": 100, "loss": 2.5, "learningRate": 1e-3, "tokensPerSecond": 1000,
                              "mfu": None, "lastCheckpointStep": 40, "worldSize": 2}),
                          read_at=T0, pod="demo-worker-0-0-0")
GANG = {**TWO, "runPolicy": {"scheduling": {"gang": "none", "schedulingTimeoutSeconds": 30, "maxAttempts": 3}}}


def ago(seconds: float) -> dt.datetime:
    return T0 - dt.timedelta(seconds=seconds)


STALL_RESTART = {**TWO, "runPolicy": {"watchdog": {"stallSeconds": 300}}}


def running_status(**over: Any) -> dict[str, Any]:
    s = copy.deepcopy(RUNNING)
    s.update(over)
    return s


@dataclass
class Case:
    id: str
    spec: dict[str, Any]
    pods: list[PodView] = field(default_factory=list)
    status: dict[str, Any] | None = None
    at: float = 0.0
    children: bool = True  # Service and ConfigMap exist
    progress: ProgressReading | None = None
    problems: tuple[str, ...] = ()
    # expectations (None: not checked)
    phase: str | None = None
    create: list[str] | None = None
    delete: list[str] | None = None
    events: list[str] | None = None
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, reason)
    restarts: dict[str, int] = field(default_factory=dict)
    requeue: float | str | None = "any"
    status_has: dict[str, Any] = field(default_factory=dict)
    delete_job: bool = False


CASES: list[Case] = [
    # ------------------------------------------------------------------ creation
    Case("create: children and every worker, deterministic names", TWO, children=False, phase="Pending",
         create=[name(0), name(1)], delete=[], events=[], conditions={"Running": ("False", "Pending")},
         status_has={"selector": "kubetrain.dev/job-name=demo", "startTime": ts(0)}),
    Case("create is idempotent: existing pending pods are not created again", TWO,
         pods=[pod(0, phase="Pending"), pod(1, phase="Pending")], status={"phase": "Pending"},
         phase="Pending", create=[], delete=[], events=[], conditions={"Scheduled": ("False", "Pending")}),
    Case("all workers running: Running, Event, world size", {"workers": {"replicas": 2, "gpusPerWorker": 4}},
         pods=[pod(0), pod(1)], status={"phase": "Pending"}, phase="Running", create=[], events=["Running"],
         conditions={"Running": ("True", "Running"), "Scheduled": ("True", "Scheduled")},
         status_has={"worldSize": 8, "workers": {"desired": 2, "active": 2, "ready": 2, "failed": 0}}),
    Case("steady state replays to nothing", TWO, pods=[pod(0), pod(1)], status=running_status(),
         phase="Running", create=[], delete=[], events=[], requeue=None),
    Case("unschedulable worker: Scheduled=False Unschedulable with the scheduler's message", TWO,
         pods=[pod(0), pod(1, phase="Pending", unschedulable="0/4 nodes: Insufficient nvidia.com/gpu")],
         status={"phase": "Pending"}, phase="Pending", events=["Unschedulable"],
         conditions={"Scheduled": ("False", "Unschedulable")}),
    Case("worker stuck on its image: Running=False with the kubelet's reason, one Warning", TWO,
         pods=[pod(0), pod(1, phase="Pending", node="node-b",
                           stuck=("ImagePullBackOff", "container trainer: Back-off pulling image \"x:1\""))],
         status={"phase": "Pending"}, phase="Pending", events=["ImagePullBackOff"],
         conditions={"Running": ("False", "ImagePullBackOff"), "Scheduled": ("True", "Scheduled")}),
    Case("worker still stuck on the same reason: no second Warning", TWO,
         pods=[pod(0), pod(1, phase="Pending", node="node-b", stuck=("CreateContainerConfigError", "container "
                                                                    "trainer: secret \"s\" not found"))],
         status={"phase": "Pending", "conditions": [
             {"type": "Running", "status": "False", "reason": "CreateContainerConfigError", "message": "",
              "lastTransitionTime": ts(-30)}]},
         phase="Pending", events=[], conditions={"Running": ("False", "CreateContainerConfigError")}),
    Case("missing Service and ConfigMap are recreated", TWO, pods=[pod(0), pod(1)], status=running_status(),
         children=False, create=[], events=[]),
    # ----------------------------------------------------------------- elastic
    Case("scale up within [min,max]: only the new index is created", {**ELASTIC, "workers": {
         **ELASTIC["workers"], "replicas": 3}}, pods=[pod(0, nnodes="1:4"), pod(1, nnodes="1:4")],
         status=running_status(), phase="Running", create=[name(2)], delete=[], events=["Scaled"],
         restarts={"rescale": 1, "total": 1}, status_has={"workers": {"desired": 3, "active": 2, "ready": 2,
                                                                     "failed": 0}}),
    Case("scale down: the highest index goes, survivors stay", ELASTIC,
         pods=[pod(0, nnodes="1:4"), pod(1, nnodes="1:4"), pod(2, nnodes="1:4")],
         status=running_status(workers={"desired": 3, "active": 3, "ready": 3, "failed": 0}),
         phase="Running", create=[], delete=[name(2)], events=["Scaled"], restarts={"rescale": 1}),
    Case("scale of a fixed-size gang changes --nnodes: whole-gang restart (rescale)",
         {"workers": {"replicas": 3}}, pods=[pod(0), pod(1)], status=running_status(), phase="Restarting",
         create=[], delete=[name(0), name(1)], events=["Rescaled"], restarts={"rescale": 1, "failure": 0},
         status_has={"restartGeneration": 1}, requeue=0.0),
    # --------------------------------------------------------------- lost pods
    Case("pod stuck Terminating is replaced at once under a new name", TWO,
         pods=[pod(0), pod(1, deleting=True)], status=running_status(), create=[name(1, inc=1)], delete=[],
         restarts={"total": 0}),
    Case("pod deleted outright is recreated", TWO, pods=[pod(0)], status=running_status(),
         create=[name(1)], restarts={"total": 0}),
    Case("evicted pod: deleted, replaced, not counted", TWO,
         pods=[pod(0), pod(1, phase="Failed", reason="Evicted", disrupted=True, exit_code=None, ready=False)],
         status=running_status(), delete=[name(1)], create=[name(1, inc=1)], restarts={"total": 0, "failure": 0}),
    # ---------------------------------------------------------------- failures
    Case("retryable failure: whole-gang restart with backoff; failed pod kept for logs", TWO,
         pods=[pod(0), failed(1, 1, message="CUDA error")], status=running_status(), phase="Restarting",
         create=[], delete=[name(0)], events=["WorkerFailed"], restarts={"failure": 1, "total": 1},
         conditions={"Running": ("False", "WorkerFailed")}, requeue=10.0,
         status_has={"restartGeneration": 1, "backoffUntil": ts(10),
                     "lastFailure": {"pod": name(1), "exitCode": 1, "reason": "", "message": "CUDA error",
                                     "time": ts(0)}}),
    Case("during backoff nothing is created", TWO, pods=[failed(1, 1)],
         status=running_status(phase="Restarting", restartGeneration=1, backoffUntil=ts(10),
                               lastFailure={"pod": name(1)}, restarts={"failure": 1, "total": 1}),
         at=4, phase="Restarting", create=[], delete=[], events=[], requeue=6.0),
    Case("backoff over: the new generation is created", TWO, pods=[failed(1, 1)],
         status=running_status(phase="Restarting", restartGeneration=1, backoffUntil=ts(10),
                               lastFailure={"pod": name(1)}, restarts={"failure": 1, "total": 1}),
         at=10, phase="Restarting", create=[name(0, 1), name(1, 1)], delete=[],
         status_has={"backoffUntil": None}),
    Case("second failure backs off twice as long", TWO, pods=[pod(0, 1), failed(1, 137, 1)],
         status=running_status(restartGeneration=1, restarts={"failure": 1, "total": 1}), requeue=20.0,
         restarts={"failure": 2, "total": 2}, status_has={"backoffUntil": ts(20), "restartGeneration": 2}),
    Case("backoffLimit reached: Failed BackoffLimitExceeded, running pods cleaned", TWO,
         pods=[pod(0, 3), failed(1, 1, 3)],
         status=running_status(restartGeneration=3, restarts={"failure": 3, "total": 3}),
         phase="Failed", delete=[name(0, 3)], create=[], events=["BackoffLimitExceeded"],
         conditions={"Failed": ("True", "BackoffLimitExceeded"), "Running": ("False", "BackoffLimitExceeded")},
         restarts={"failure": 3}, status_has={"completionTime": ts(0)}),
    Case("backoffLimit 0: the first failure fails the job", {**TWO, "runPolicy": {"backoffLimit": 0}},
         pods=[pod(0), failed(1, 2)], status=running_status(), phase="Failed",
         conditions={"Failed": ("True", "BackoffLimitExceeded")}),
    Case("exit 75: restart at once, not counted toward backoffLimit", TWO,
         pods=[pod(0), failed(1, 75, reason="Preempted")], status=running_status(), phase="Restarting",
         delete=[name(0)], events=["Preempted"], restarts={"preemption": 1, "failure": 0, "total": 1},
         requeue=0.0, status_has={"backoffUntil": None, "restartGeneration": 1}),
    Case("exit 64: Failed at once with the trainer's reason and message", TWO,
         pods=[pod(0), failed(1, 64, reason="UnknownPreset", message="model.preset 7B (step 0)")],
         status=running_status(), phase="Failed", delete=[name(0)], events=["UnknownPreset"],
         conditions={"Failed": ("True", "UnknownPreset")}, restarts={"total": 0}),
    Case("exit 65 without a readable reason: ModelOrDataError", TWO,
         pods=[pod(0), failed(1, 65, reason="Error", message="shard 3 is truncated")], status=running_status(),
         phase="Failed", conditions={"Failed": ("True", "ModelOrDataError")}),
    Case("a scaled-away worker's exit is not a failure", ELASTIC,
         pods=[pod(0, nnodes="1:4"), pod(1, nnodes="1:4"), failed(2, 1, nnodes="1:4")],
         status=running_status(workers={"desired": 2, "active": 2, "ready": 2, "failed": 0}),
         phase="Running", restarts={"failure": 0}, delete=[name(2)]),
    Case("a pod failing while being deleted is not counted", TWO, pods=[pod(0), failed(1, 1, deleting=True)],
         status=running_status(), restarts={"failure": 0}, create=[name(1, inc=1)]),
    Case("old generations are deleted, the last failure's pod kept", TWO,
         pods=[pod(0, 1), pod(1, 1), pod(0, 0), failed(1, 1, 0)],
         status=running_status(restartGeneration=1, lastFailure={"pod": name(1)}),
         delete=[name(0, 0)], create=[]),
    Case("a generation newer than the status (status lost) is adopted, not duplicated", TWO,
         pods=[pod(0, 2), pod(1, 2)], status=running_status(restartGeneration=0), create=[], delete=[],
         status_has={"restartGeneration": 2}),
    # --------------------------------------------------------------- below min
    Case("drops below minReplicas: wait, Warning, timer", {**TWO, "elastic": {"belowMinTimeoutSeconds": 60}},
         pods=[pod(0), pod(1, inc=1, phase="Pending")], status=running_status(), phase="Restarting",
         events=["BelowMinReplicas"], conditions={"Running": ("False", "BelowMinReplicas")}, requeue=60.0,
         status_has={"belowMinSince": ts(0)}),
    Case("below min within the timeout: still waiting, no new Event",
         {**TWO, "elastic": {"belowMinTimeoutSeconds": 60}}, pods=[pod(0), pod(1, inc=1, phase="Pending")],
         status=running_status(phase="Restarting", belowMinSince=ts(0)), at=30, phase="Restarting", events=[],
         requeue=30.0),
    Case("below min past the timeout: Failed BelowMinReplicas", {**TWO, "elastic": {"belowMinTimeoutSeconds": 60}},
         pods=[pod(0), pod(1, inc=1, phase="Pending")],
         status=running_status(phase="Restarting", belowMinSince=ts(0)), at=60, phase="Failed",
         events=["BelowMinReplicas"], conditions={"Failed": ("True", "BelowMinReplicas")},
         delete=[name(0), name(1, inc=1)]),
    Case("after a restart's backoff the timer runs silently, the restart's reason kept",
         {**TWO, "elastic": {"belowMinTimeoutSeconds": 60}}, pods=[pod(0, 1, phase="Pending"), pod(1, 1, phase="Pending")],
         status=running_status(phase="Restarting", restartGeneration=1, conditions=[
             {"type": "Running", "status": "False", "reason": "WorkerFailed", "message": "", "lastTransitionTime": ts(-5)}]),
         phase="Restarting", events=[], conditions={"Running": ("False", "WorkerFailed")}, requeue=60.0,
         status_has={"belowMinSince": ts(0)}),
    Case("new workers that never start: Failed BelowMinReplicas", {**TWO, "elastic": {"belowMinTimeoutSeconds": 60}},
         pods=[pod(0, 1, phase="Pending"), pod(1, 1, phase="Pending")],
         status=running_status(phase="Restarting", restartGeneration=1, belowMinSince=ts(-60)), phase="Failed",
         conditions={"Failed": ("True", "BelowMinReplicas")}),
    Case("back to minReplicas: Running again, timer cleared", TWO, pods=[pod(0), pod(1, inc=1)],
         status=running_status(phase="Restarting", belowMinSince=ts(0)), at=30, phase="Running",
         events=["Running"], status_has={"belowMinSince": None}),
    # ---------------------------------------------------------------- suspend
    Case("suspend: workers deleted (their grace period), status kept",
         {**TWO, "runPolicy": {"suspend": True}}, pods=[pod(0), pod(1)],
         status=running_status(restarts={"failure": 1, "total": 1}), phase="Suspended",
         delete=[name(0), name(1)], create=[], events=["Suspended"],
         conditions={"Suspended": ("True", "Suspended"), "Running": ("False", "Suspended")},
         restarts={"failure": 1}, status_has={"startTime": ts(-100)}),
    Case("suspended and empty: nothing to do", {**TWO, "runPolicy": {"suspend": True}},
         status={"phase": "Suspended", "conditions": [{"type": "Suspended", "status": "True",
                                                      "reason": "Suspended", "message": ""}]},
         phase="Suspended", create=[], delete=[], events=[]),
    Case("created suspended (Kueue): no pods at all", {**TWO, "runPolicy": {"suspend": True}}, children=False,
         phase="Suspended", create=[], events=["Suspended"]),
    Case("resume: recreates the workers under new names", TWO, pods=[pod(0, deleting=True)],
         status={"phase": "Suspended", "startTime": ts(-100), "workers": {"desired": 2},
                 "conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": ""}]},
         phase="Pending", create=[name(0, inc=1), name(1)], events=["Resumed"],
         conditions={"Suspended": ("False", "Resumed")}),
    # ---------------------------------------------------------------- deadline
    Case("deadline pending: woken when it is due", {**TWO, "runPolicy": {"activeDeadlineSeconds": 300}},
         pods=[pod(0), pod(1)], status=running_status(startTime=ts(-100)), phase="Running", requeue=200.0),
    Case("deadline exceeded: Failed DeadlineExceeded, workers deleted",
         {**TWO, "runPolicy": {"activeDeadlineSeconds": 300}}, pods=[pod(0), pod(1)],
         status=running_status(startTime=ts(-300)), phase="Failed", delete=[name(0), name(1)],
         events=["DeadlineExceeded"], conditions={"Failed": ("True", "DeadlineExceeded")}),
    Case("deadline clock restarts at resume", {**TWO, "runPolicy": {"activeDeadlineSeconds": 300}},
         pods=[pod(0), pod(1)], status=running_status(startTime=ts(-1000), conditions=[
             {"type": "Suspended", "status": "False", "reason": "Resumed", "message": "",
              "lastTransitionTime": ts(-100)}]), phase="Running", requeue=200.0),
    # ------------------------------------------------------------- completion
    Case("a worker exits 0: Succeeded, the rest cleaned (cleanPodPolicy Running)", TWO,
         pods=[pod(0, phase="Succeeded", exit_code=0), pod(1)], status=running_status(), phase="Succeeded",
         delete=[name(1)], events=["Completed"], conditions={"Succeeded": ("True", "Completed")},
         status_has={"completionTime": ts(0), "worldSize": 0}),
    Case("cleanPodPolicy None keeps every pod", {**TWO, "runPolicy": {"cleanPodPolicy": "None"}},
         pods=[pod(0, phase="Succeeded", exit_code=0), pod(1)], status=running_status(), phase="Succeeded",
         delete=[]),
    Case("cleanPodPolicy All deletes finished pods too", {**TWO, "runPolicy": {"cleanPodPolicy": "All",
                                                                               "backoffLimit": 0}},
         pods=[pod(0), failed(1, 1)], status=running_status(), phase="Failed", delete=[name(0), name(1)]),
    Case("TTL not yet due: woken when it is", {**TWO, "runPolicy": {"ttlSecondsAfterFinished": 60}},
         status={"phase": "Succeeded", "completionTime": ts(0)}, at=20, phase="Succeeded", requeue=40.0,
         events=[]),
    Case("TTL due: the job is deleted", {**TWO, "runPolicy": {"ttlSecondsAfterFinished": 60}},
         status={"phase": "Succeeded", "completionTime": ts(0)}, at=60, events=["TTLExpired"], delete_job=True),
    Case("a finished job never creates pods again", TWO, pods=[],
         status={"phase": "Failed", "completionTime": ts(0)}, phase="Failed", create=[], events=[]),
    # ------------------------------------------------------------ progress, stall
    Case("a progress reading is written to status.progress", TWO, pods=[pod(0), pod(1)], status=running_status(),
         progress=READING, events=[], status_has={"progress": {
             "step": 42, "maxSteps": 100, "loss": 2.5, "learningRate": 0.001, "tokensPerSecond": 1000.0, "mfu": None,
             "lastCheckpointStep": 40, "updatedAt": ts(0), "stepAdvancedAt": ts(0)}}),
    Case("a reading no newer than the status changes nothing (pod stopped answering)", TWO,
         pods=[pod(0), pod(1)], status=running_status(progress={"step": 50, "updatedAt": ts(5)}), progress=READING,
         at=30, status_has={"progress": {"step": 50, "maxSteps": None, "loss": None, "learningRate": None,
                                         "tokensPerSecond": None, "mfu": None, "lastCheckpointStep": None,
                                         "updatedAt": ts(5), "stepAdvancedAt": None}}),
    Case("same step read again: stepAdvancedAt kept", TWO, pods=[pod(0), pod(1)],
         status=running_status(progress={"step": 42, "updatedAt": ts(-10), "stepAdvancedAt": ts(-60)}),
         progress=READING, status_has={"progress": {
             "step": 42, "maxSteps": 100, "loss": 2.5, "learningRate": 0.001, "tokensPerSecond": 1000.0,
             "mfu": None, "lastCheckpointStep": 40, "updatedAt": ts(0), "stepAdvancedAt": ts(-60)}}),
    Case("watchdog: progressing, woken when the stall would be due", STALL_RESTART, pods=[pod(0), pod(1)],
         status=running_status(progress={"step": 42, "updatedAt": ts(-5), "stepAdvancedAt": ts(-30)}),
         phase="Running", requeue=270.0, events=[]),
    Case("watchdog: stalled, restart from the checkpoint (restarts.stall)", STALL_RESTART, pods=[pod(0), pod(1)],
         status=running_status(progress={"step": 42, "updatedAt": ts(-5), "stepAdvancedAt": ts(-100)}), at=250,
         phase="Restarting", delete=[name(0), name(1)], events=["ProgressStalled"],
         conditions={"Running": ("False", "ProgressStalled")}, restarts={"stall": 1, "failure": 0, "total": 1},
         status_has={"restartGeneration": 1}),
    Case("watchdog: stalled, action fail", {**STALL_RESTART, "runPolicy": {"watchdog": {
         "stallSeconds": 300, "action": "fail"}}}, pods=[pod(0), pod(1)],
         status=running_status(progress={"step": 42, "stepAdvancedAt": ts(-100)}), at=250, phase="Failed",
         events=["ProgressStalled"], conditions={"Failed": ("True", "ProgressStalled")}),
    Case("watchdog: no progress ever reported counts from Running", STALL_RESTART, pods=[pod(0), pod(1)],
         status=running_status(), at=210, phase="Restarting", events=["ProgressStalled"]),
    Case("watchdog: the clock restarts when the gang runs again", STALL_RESTART, pods=[pod(0, 1), pod(1, 1)],
         status=running_status(restartGeneration=1, progress={"step": 42, "stepAdvancedAt": ts(-1000)},
                               conditions=[{"type": "Running", "status": "True", "reason": "Running",
                                            "message": "", "lastTransitionTime": ts(-10)}]),
         phase="Running", requeue=290.0, events=[]),
    # --------------------------------------------------------- gang scheduling timeout
    Case("gang short of minReplicas: woken when the scheduling timeout is due", GANG,
         pods=[pod(0, created=ago(5)), pod(1, phase="Pending", unschedulable="Insufficient nvidia.com/gpu",
                                         created=ago(5))],
         status={"phase": "Pending"}, phase="Pending", requeue=25.0, conditions={"Scheduled": ("False", "Unschedulable")}),
    Case("gang not placed in time: every pod released (the scheduled one too), retried after a backoff", GANG,
         pods=[pod(0, created=ago(30)), pod(1, phase="Pending", unschedulable="Insufficient nvidia.com/gpu",
                                          created=ago(30))],
         status={"phase": "Pending"}, phase="Restarting", delete=[name(0), name(1)], create=[],
         events=["Unschedulable", "Unschedulable"], conditions={"Scheduled": ("False", "Unschedulable")},
         restarts={"unschedulable": 1, "failure": 0}, requeue=10.0,
         status_has={"schedulingAttempts": 1, "restartGeneration": 1}),
    Case("gang not placed at the last attempt: Failed Unschedulable", GANG,
         pods=[pod(0, 2, created=ago(30)), pod(1, 2, phase="Pending", created=ago(30))],
         status={"phase": "Restarting", "restartGeneration": 2, "schedulingAttempts": 2}, phase="Failed",
         conditions={"Failed": ("True", "Unschedulable")}, status_has={"schedulingAttempts": 3}),
    Case("without runPolicy.scheduling a short gang just waits", TWO,
         pods=[pod(0, created=ago(3000)), pod(1, phase="Pending", created=ago(3000))], status={"phase": "Pending"},
         phase="Pending", delete=[], requeue=None),
    # ----------------------------------------------------------------- invalid
    Case("invalid spec: Failed InvalidSpec with the problems, no pods", TWO, children=False,
         problems=("spec.deepspeed.zero_optimization.stage: 4 is not 0-3",), phase="Failed", create=[],
         events=["InvalidSpec"], conditions={"Failed": ("True", "InvalidSpec")}),
]


def _check(case: Case, d: Decision) -> None:
    st = d.status.model_dump(by_alias=True, mode="json")
    if case.phase is not None:
        assert d.status.phase == case.phase
    pods_created = [a.name for a in d.pods_to_create]
    if case.create is not None:
        assert pods_created == case.create
    if case.delete is not None:
        assert sorted(d.pods_to_delete) == sorted(case.delete)
    events = [e.reason for e in d.events] + [a.event.reason for a in d.actions
                                              if isinstance(a, (DeletePod, Create)) and a.event is not None]
    if case.events is not None:
        assert events == case.events
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"] or []}
    for type_, want in case.conditions.items():
        assert conds.get(type_) == want, conds
    for key, want in case.restarts.items():
        assert st["restarts"][key] == want, st["restarts"]
    if case.requeue != "any":
        assert d.requeue_after == case.requeue
    for key, want in case.status_has.items():
        assert st[key] == want, (key, st[key])
    assert any(isinstance(a, DeleteJob) for a in d.actions) == case.delete_job
    given = (case.status or {}).get("conditions") or []
    for c in st["conditions"] or []:
        assert c["lastTransitionTime"]
        if not any(g.items() <= c.items() for g in given):  # set by this pass
            assert c["observedGeneration"] == 1
    assert st["observedGeneration"] == 1
    if not case.problems and d.status.phase not in ("Failed", "Succeeded", "Suspended"):
        created = {a.manifest["kind"] for a in d.actions if isinstance(a, Create)}
        assert ("Service" in created) == (not case.children)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reconcile_table(case: Case) -> None:
    spec = case.spec
    job = make_job(spec, case.status, case.problems)
    observed = Observed(pods=tuple(case.pods), service=case.children,
                        config_map_hash=cm_hash(spec) if case.children else None, progress=case.progress)
    now = T0 + dt.timedelta(seconds=case.at)
    d = reconcile(job, observed, now, SETTINGS)
    _check(case, d)
    # Pure: the same input decides the same again.
    again = reconcile(job, observed, now, SETTINGS)
    assert again.status == d.status and again.actions == d.actions and again.events == d.events


# ------------------------------------------------------------------ every loss named
# One row per row of docs/operator.md's "a worker is lost" table: how the pod went, what the
# pass sees of it, and the cause the WorkerLost Event and the Running condition must name.

def _disrupted(index: int, reason: str, **kw: Any) -> PodView:
    return pod(index, deleting=True, disrupted=True, disruption=reason, **kw)


LOSSES = [
    ("deleted (still Terminating)", [pod(0), pod(1, deleting=True)], [], "deleted"),
    ("deleted (already gone when the pass ran)", [pod(0)], [pod(1, deleting=True)], "deleted"),
    ("evicted through the Eviction API (drain)", [pod(0), _disrupted(1, "EvictionByEvictionAPI")], [], "evicted"),
    ("evicted by the kubelet (node pressure)",
     [pod(0), pod(1, phase="Failed", reason="Evicted", disrupted=True, disruption="Evicted", ready=False)], [],
     "evicted by the kubelet"),
    ("node lost (NoExecute taint)", [pod(0), _disrupted(1, "DeletionByTaintManager")], [], "node lost"),
    ("node deleted (pod garbage-collected)", [pod(0)], [_disrupted(1, "DeletionByPodGC")],
     "node lost (pod garbage-collected)"),
    ("preempted by the scheduler", [pod(0), _disrupted(1, "PreemptionByScheduler")], [],
     "preempted by the scheduler"),
]


@pytest.mark.parametrize(("pods", "gone", "cause"), [row[1:] for row in LOSSES], ids=[row[0] for row in LOSSES])
@pytest.mark.parametrize("spec", [TWO, ELASTIC], ids=["fixed", "elastic"])
def test_every_loss_is_named(spec: dict[str, Any], pods: list[PodView], gone: list[PodView], cause: str) -> None:
    if spec is ELASTIC:
        pods = [replace(p, nnodes="1:4") for p in pods]
        gone = [replace(p, nnodes="1:4") for p in gone]
    job = make_job(spec, running_status())
    observed = Observed(pods=tuple(pods), gone=tuple(gone), service=True, config_map_hash=cm_hash(spec))
    d = reconcile(job, observed, T0, SETTINGS)
    lost = name(1)
    events = [e for e in d.events] + [a.event for a in d.actions
                                      if isinstance(a, (DeletePod, Create)) and a.event is not None]
    named = [e for e in events if e.reason == "WorkerLost"]
    assert len(named) == 1, events
    assert named[0].type == "Warning" and f"pod {lost} was lost: {cause}" in named[0].message
    # Replaced under a new name, not counted as a restart.
    assert [a.name for a in d.pods_to_create] == [name(1, inc=1)]
    assert d.status.restarts is not None and d.status.restarts.total == 0
    running = next(c for c in d.status.conditions or [] if c.type == "Running")
    assert running.reason == "WorkerLost" and f"pod {lost} was lost: {cause}" in running.message
    # Elastic (min 1): still Running at world size 1; fixed (min 2): below min, Restarting.
    assert (d.status.phase, running.status) == (("Running", "True") if spec is ELASTIC else ("Restarting", "False"))
    # The next pass, with the replacement created and still starting, names nobody again and
    # keeps the reason; once it runs, the reason is Running again.
    replacement = pod(1, inc=1, phase="Pending", nnodes=pods[0].nnodes)
    after = make_job(spec, d.status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    still = [p for p in pods if p.index == 0] + [replacement]
    d2 = reconcile(after, Observed(pods=tuple(still), service=True, config_map_hash=cm_hash(spec)), T0, SETTINGS)
    assert not [e for e in d2.events if e.reason == "WorkerLost"] and not d2.pods_to_create
    assert next(c for c in d2.status.conditions or [] if c.type == "Running").reason == "WorkerLost"
    healed = [p for p in pods if p.index == 0] + [replace(replacement, phase="Running", ready=True, node="n")]
    again = make_job(spec, d2.status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    d3 = reconcile(again, Observed(pods=tuple(healed), service=True, config_map_hash=cm_hash(spec)), T0, SETTINGS)
    assert d3.status.phase == "Running"
    assert next(c for c in d3.status.conditions or [] if c.type == "Running").reason == "Running"


def test_pods_deleted_by_suspension_are_not_losses() -> None:
    status = running_status(phase="Suspended", conditions=[
        {"type": "Suspended", "status": "True", "reason": "Suspended", "message": "", "lastTransitionTime": ts(-5)}])
    d = reconcile(make_job(TWO, status), Observed(pods=(pod(0, deleting=True), pod(1, deleting=True)),
                                                  service=True, config_map_hash=cm_hash(TWO)), T0, SETTINGS)
    assert len(d.pods_to_create) == 2
    assert not [a for a in d.pods_to_create if a.event is not None]


def test_loss_cause_from_a_real_pod_object() -> None:
    raw = {"metadata": {"name": "p", "deletionTimestamp": "2026-03-01T12:00:00Z"},
           "status": {"phase": "Running", "conditions": [
               {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]}}
    assert pod_view(raw).loss_cause == "evicted"
    raw["status"]["conditions"] = []
    assert pod_view(raw).loss_cause == "deleted"


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_spec_edit_updates_the_config_map() -> None:
    job = make_job(TWO, running_status())
    d = reconcile(job, Observed(pods=(pod(0), pod(1)), service=True, config_map_hash="stale"), T0, SETTINGS)
    assert [type(a) for a in d.actions] == [Update]


def test_gang_pod_group_is_created_then_kept_in_step() -> None:
    spec = {**TWO, "runPolicy": {"scheduling": {"gang": "volcano", "queue": "q1"}}}
    job = make_job(spec)
    d = reconcile(job, Observed(service=True, config_map_hash=cm_hash(spec)), T0, SETTINGS)
    groups = [a.manifest for a in d.actions if isinstance(a, Create) and a.kind == "PodGroup"]
    assert len(groups) == 1 and groups[0]["spec"]["minMember"] == 2
    assert all(p.manifest["spec"]["schedulerName"] == "volcano" for p in d.pods_to_create)
    want = groups[0]["metadata"]["annotations"][n.ANNOTATION_SPEC_HASH]
    same = reconcile(job, Observed(service=True, config_map_hash=cm_hash(spec), pod_group_hash=want), T0, SETTINGS)
    assert not [a for a in same.actions if not isinstance(a, Create) or a.kind != "Pod"]
    moved = reconcile(job, Observed(service=True, config_map_hash=cm_hash(spec), pod_group_hash="old"), T0, SETTINGS)
    assert [a.manifest["kind"] for a in moved.actions if isinstance(a, Update)] == ["PodGroup"]


def test_native_pod_group_is_replaced_not_patched() -> None:
    spec = {**TWO, "runPolicy": {"scheduling": {"gang": "kubernetes"}}}
    d = reconcile(make_job(spec), Observed(pods=(pod(0), pod(1)), service=True, config_map_hash=cm_hash(spec),
                                           pod_group_hash="old"), T0, SETTINGS)
    assert [(type(a).__name__, a.manifest["kind"]) for a in d.actions] == [("DeleteChild", "PodGroup")]


@pytest.mark.parametrize(("failures", "want"), [(1, 10), (2, 20), (3, 40), (4, 60), (10, 60)])
def test_backoff_is_exponential_and_capped(failures: int, want: float) -> None:
    assert backoff_seconds(failures, SETTINGS) == want


# ------------------------------------------------------------------------ observed pods


def test_pod_view_parses_the_termination_message() -> None:
    raw = {
        "metadata": {"name": name(1, 2, 3), "labels": {n.LABEL_INDEX: "1", n.LABEL_GENERATION: "2",
                                                       n.LABEL_INCARNATION: "3"},
                     "annotations": {n.ANNOTATION_NNODES: "2:2"}},
        "spec": {"nodeName": "kwok-node-0"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
            "exitCode": 65, "reason": "Error",
            "message": '{"reason": "DataError", "message": "shard 3 truncated", "step": 17}'}}}]},
    }
    v = pod_view(raw)
    assert (v.index, v.generation, v.incarnation, v.node, v.nnodes) == (1, 2, 3, "kwok-node-0", "2:2")
    assert (v.exit_code, v.reason, v.message, v.outcome) == (65, "DataError", "shard 3 truncated (step 17)",
                                                             "permanent")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ({"phase": "Running"}, "running"),
        ({"phase": "Succeeded"}, "succeeded"),
        ({"phase": "Failed", "reason": "Evicted"}, "lost"),
        ({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}],
          "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137}}}]}, "lost"),
        ({"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 75}}}]},
         "preempted"),
        ({"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 1}}}]},
         "retryable"),
        ({"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 64}}}]},
         "permanent"),
    ],
)
def test_outcomes(status: dict[str, Any], outcome: str) -> None:
    assert pod_view({"metadata": {"name": "p"}, "status": status}).outcome == outcome


# ------------------------------------------------------------------------- scenarios


class Sim:
    """A fake cluster: pods appear Pending when created, the test moves them on. Every pass
    writes the status first and then acts, like the handlers (or crashes in between)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.status: dict[str, Any] = {}
        self.pods: dict[str, PodView] = {}
        self.now = T0
        self.events: list[str] = []
        self.created: list[str] = []
        self.job_deleted = False

    def job(self) -> Job:
        return make_job(self.spec, self.status)

    def observed(self) -> Observed:
        return Observed(pods=tuple(self.pods.values()), service=True, config_map_hash=cm_hash(self.spec))

    def step(self, seconds: float = 0.0, crash_after_status: bool = False) -> Decision:
        self.now += dt.timedelta(seconds=seconds)
        d = reconcile(self.job(), self.observed(), self.now, SETTINGS)
        self.status = d.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        if crash_after_status:
            return d
        self.events += [e.reason for e in d.events]
        for a in d.actions:
            if isinstance(a, Create) and a.kind == "Pod":
                if a.name not in self.pods:  # AlreadyExists counts as done
                    self.pods[a.name] = pod_view(a.manifest)
                    self.created.append(a.name)
            elif isinstance(a, DeletePod) and a.name in self.pods:
                self.pods.pop(a.name)  # KWOK-like: deletion is immediate
            elif isinstance(a, DeleteJob):
                self.job_deleted = True
        return d

    def settle(self, max_steps: int = 10) -> None:
        """Run passes until one decides nothing new (as requeue-after-0 would)."""
        for _ in range(max_steps):
            d = self.step()
            if d.requeue_after != 0.0 and not d.actions:
                return

    def set_all(self, phase: str) -> None:
        for k, p in self.pods.items():
            if not p.finished:
                self.pods[k] = replace(p, phase=phase, ready=phase == "Running", node="kwok-node-0")

    def finish(self, index: int, code: int, message: str = "") -> str:
        p = next(p for p in self.pods.values() if p.index == index and not p.finished)
        self.pods[p.name] = replace(p, phase="Succeeded" if code == 0 else "Failed", exit_code=code,
                                    ready=False, message=message)
        return p.name

    def counter(self, cause: str) -> int:
        return int(self.status.get("restarts", {}).get(cause, 0))


def test_scenario_failures_back_off_exponentially_until_the_limit() -> None:
    sim = Sim({"workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 2}})
    sim.settle()
    sim.set_all("Running")
    sim.step()
    assert sim.status["phase"] == "Running"
    delays = []
    for attempt in (1, 2):
        failed_pod = sim.finish(1, 1, "boom")
        d = sim.step()
        assert sim.status["phase"] == "Restarting" and sim.counter("failure") == attempt
        assert failed_pod in sim.pods  # kept for logs
        delays.append(d.requeue_after)
        assert sim.step(1).pods_to_create == []  # still backing off
        assert d.requeue_after is not None
        sim.step(d.requeue_after - 1)
        assert {p.generation for p in sim.pods.values() if not p.finished} == {attempt}
        sim.set_all("Running")
        sim.step()
        assert sim.status["phase"] == "Running"
    assert delays == [10.0, 20.0]
    sim.finish(0, 3)
    sim.step()
    assert sim.status["phase"] == "Failed"
    assert sim.status["conditions"][-1]["reason"] == "BackoffLimitExceeded"
    assert sim.counter("failure") == 2
    assert sim.events.count("WorkerFailed") == 2 and sim.events.count("BackoffLimitExceeded") == 1
    assert "BelowMinReplicas" not in sim.events  # restarting gangs are short of workers by design


def test_scenario_preemptions_never_exhaust_the_backoff_limit() -> None:
    sim = Sim({"workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 0}})
    sim.settle()
    for i in range(5):
        sim.set_all("Running")
        sim.step()
        sim.finish(i % 2, 75)
        sim.settle()
        assert sim.status["phase"] != "Failed"
    assert sim.counter("preemption") == 5 and sim.counter("failure") == 0
    assert sim.status["restartGeneration"] == 5


@pytest.mark.parametrize("crash_at", range(8))
def test_scenario_crash_between_status_and_actions_changes_nothing(crash_at: int) -> None:
    """Cut one pass of a create → run → fail → restart → run sequence short after its status
    write: the outcome (pods, counters) is the same as without the crash."""

    def run(crash: int | None) -> tuple[list[str], dict[str, int], int]:
        sim = Sim({"workers": {"replicas": 3}, "runPolicy": {"backoffLimit": 5}})
        script = ["step", "run", "step", "fail", "step", "wait", "run", "step"]
        for i, what in enumerate(script):
            if what == "run":
                sim.set_all("Running")
                continue
            if what == "fail":
                sim.finish(2, 1)
                continue
            seconds = 10.0 if what == "wait" else 0.0
            sim.step(seconds, crash_after_status=(i == crash))
            if i == crash:
                sim.step()  # the restarted operator's first pass
        sim.settle()
        live = sorted(p.name for p in sim.pods.values() if not p.finished)
        return live, dict(sim.status.get("restarts", {})), len(sim.created)

    assert run(crash_at) == run(None)


def test_scenario_replayed_passes_create_no_duplicates() -> None:
    sim = Sim({"workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 6}})
    for _ in range(5):
        sim.step()
    assert len(sim.created) == 4
    sim.set_all("Running")
    for _ in range(5):
        sim.step()
    assert len(sim.created) == 4 and sim.events.count("Running") == 1


def test_scenario_elastic_scale_up_and_down_keeps_survivors() -> None:
    sim = Sim({"workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4}})
    sim.settle()
    sim.set_all("Running")
    sim.step()
    first = set(sim.pods)
    sim.spec = {"workers": {"replicas": 4, "minReplicas": 1, "maxReplicas": 4}}
    sim.settle()
    assert first < set(sim.pods) and len(sim.pods) == 4
    sim.set_all("Running")
    sim.step()
    sim.spec = {"workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 4}}
    sim.settle()
    assert set(sim.pods) == {name(0)}
    assert sim.counter("rescale") == 2 and sim.status["phase"] == "Running"


def test_scenario_suspend_and_resume_keep_status() -> None:
    sim = Sim({"workers": {"replicas": 2}})
    sim.settle()
    sim.set_all("Running")
    sim.step()
    sim.finish(0, 75)
    sim.settle()
    sim.set_all("Running")
    sim.step()
    sim.spec = {"workers": {"replicas": 2}, "runPolicy": {"suspend": True}}
    sim.settle()
    assert sim.pods == {} and sim.status["phase"] == "Suspended" and sim.counter("preemption") == 1
    sim.spec = {"workers": {"replicas": 2}, "runPolicy": {"suspend": False}}
    sim.settle()
    assert len(sim.pods) == 2 and sim.status["phase"] == "Pending"
    sim.set_all("Running")
    sim.step()
    assert sim.status["phase"] == "Running" and sim.counter("preemption") == 1
    assert sim.events.count("Suspended") == 1 and sim.events.count("Resumed") == 1


# ------------------------------------------------------- the handlers' plumbing (pure parts)


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"phase": "Running"}, {"phase": "Running"}, {}),
        ({"phase": "Running", "backoffUntil": "t"}, {"phase": "Restarting"}, {"phase": "Restarting",
                                                                           "backoffUntil": None}),
        ({"workers": {"desired": 2, "ready": 2}}, {"workers": {"desired": 3, "ready": 2}}, {"workers": {"desired": 3}}),
        ({"conditions": [{"type": "Running"}]}, {"conditions": []}, {"conditions": []}),
        ({}, {"restarts": {"total": 1}}, {"restarts": {"total": 1}}),
    ],
)
def test_status_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patch(old, new) == patch


def test_work_queue_never_hands_out_a_key_twice_at_once_and_loses_no_add() -> None:
    async def scenario() -> list[str]:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("a")  # deduplicated while queued
        q.add("b")
        assert len(q) == 2
        first = await q.get()
        q.add(first)  # added while in work: handed out again only after done()
        second = await q.get()
        assert second != first and len(q) == 0
        q.done(second)
        q.done(first)
        third = await q.get()
        q.done(third)
        q.add_after("c", 0.05)
        q.add_after("c", 10)  # a later time does not postpone the earlier one
        fourth = await asyncio.wait_for(q.get(), 2)
        q.done(fourth)
        q.close()
        return [first, second, third, fourth]

    assert asyncio.run(scenario()) == ["a", "b", "a", "c"]


def test_retry_delays_grow_and_reset() -> None:
    r: RetryDelays[str] = RetryDelays(base=0.5, cap=4)
    assert [r.next("k") for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    r.reset("k")
    assert r.next("k") == 0.5


# ------------------------------------------------------------------------ progress polling


def _raw_pod(index: int, gen: int = 0, ready: bool = True, ip: str | None = "127.0.0.1", port: int = 9090,
             deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name(index, gen), "labels": {n.LABEL_INDEX: str(index),
                                                                  n.LABEL_GENERATION: str(gen)}}
    if deleting:
        meta["deletionTimestamp"] = ts(0)
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status,
            "spec": {"containers": [{"name": "trainer", "ports": [{"name": "metrics", "containerPort": port}]}]}}


def test_progress_target_is_the_lowest_index_ready_pod_of_the_generation() -> None:
    pods = [_raw_pod(0, ready=False), _raw_pod(1, deleting=True), _raw_pod(3, port=9100), _raw_pod(2, gen=1),
            _raw_pod(4, ip=None)]
    target = target_of(pods, 0)
    assert target == Target(pod=name(3), url="http://127.0.0.1:9100/progress")
    assert target_of(pods, 1) == Target(pod=name(2, 1), url="http://127.0.0.1:9090/progress")
    assert target_of(pods, 2) is None


class _ProgressServer:
    """A stand-in for a worker's /progress on loopback (answers, or hangs past the timeout)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.body: bytes = b"{}"
        self.hang = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                import time as _time

                _time.sleep(outer.hang)
                self.send_response(200 if self.path == "/progress" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/progress"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_poller_reads_progress_keeps_the_last_value_and_never_blocks() -> None:
    server = _ProgressServer()
    clock = [T0]
    seen: list[str] = []

    async def scenario() -> None:
        import aiohttp

        poller: ProgressPoller[str] = ProgressPoller(1.0, on_reading=seen.append, clock=lambda: clock[0], timeout=0.5)
        poller.set_target("job", Target(pod="p0", url=server.url))
        poller.set_target("gone", Target(pod="p9", url="http://127.0.0.1:9/progress"))  # nothing listens
        async with aiohttp.ClientSession() as session:
            server.body = json.dumps({"step": 7, "loss": 3.0}).encode()
            await poller.poll_once(session)
            assert poller.readings["job"].data == ProgressReport(step=7, loss=3.0)
            assert poller.readings["job"].read_at == T0 and "gone" not in poller.readings
            clock[0] = T0 + dt.timedelta(seconds=10)
            server.hang = 2.0  # slower than the timeout: the last reading stays, with its time
            started = time.monotonic()
            await poller.poll_once(session)
            assert time.monotonic() - started < 1.5
            assert poller.readings["job"].read_at == T0
            server.hang, server.body = 0.0, b"not json"
            await poller.poll_once(session)
            assert poller.readings["job"].data.step == 7
        poller.forget("job")
        assert "job" not in poller.readings and "job" not in poller.targets

    try:
        asyncio.run(scenario())
    finally:
        server.close()
    assert seen == ["job"]


def test_success_records_the_final_step_from_the_termination_record() -> None:
    """The last /progress poll may predate the last steps; the launcher's record does not."""
    status = running_status(progress={"step": 27, "loss": 1.5, "updatedAt": ts(-5)})
    done = pod(0, phase="Succeeded", exit_code=0, final_step=30, final_loss=1.25)
    d = reconcile(make_job(TWO, status), Observed(pods=(done, pod(1)), service=True, config_map_hash=cm_hash(TWO)),
                  T0, SETTINGS)
    assert d.status.phase == "Succeeded"
    assert d.status.progress is not None
    assert (d.status.progress.step, d.status.progress.loss) == (30, 1.25)


def test_success_takes_the_final_step_from_the_pod_that_has_one() -> None:
    """Both pods exited 0 in the same pass; the first by index has no record (an older trainer
    image): the other pod's final step is the job's."""
    status = running_status(progress={"step": 12, "loss": 1.5, "updatedAt": ts(-5)})
    pods = (pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0, final_step=20, final_loss=1.1))
    d = reconcile(make_job(TWO, status), Observed(pods=pods, service=True, config_map_hash=cm_hash(TWO)), T0, SETTINGS)
    assert d.status.phase == "Succeeded" and d.status.progress is not None
    assert (d.status.progress.step, d.status.progress.loss) == (20, 1.1)


def test_termination_record_step_and_loss_are_parsed() -> None:
    from kubetrain.controller.observed import pod_view

    raw = {"metadata": {"name": "p", "labels": {}}, "status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message":
            '{"reason": "Succeeded", "message": "training finished", "step": 30, "loss": 1.25}'}}}]}}
    view = pod_view(raw)
    assert (view.final_step, view.final_loss, view.reason) == (30, 1.25, "Succeeded")


def test_pod_view_names_a_container_that_cannot_start() -> None:
    """The kubelet's waiting reason reaches the PodView only for reasons a pod does not leave by
    itself; ContainerCreating (normal start) is not 'stuck'."""
    from kubetrain.controller.observed import pod_view

    def raw(reason: str, init: bool = False) -> dict[str, Any]:
        cs = [{"name": "trainer", "state": {"waiting": {"reason": reason, "message": f"why {reason}"}}}]
        key = "initContainerStatuses" if init else "containerStatuses"
        return {"metadata": {"name": "p", "labels": {}}, "status": {"phase": "Pending", key: cs}}

    assert pod_view(raw("ContainerCreating")).stuck is None
    assert pod_view(raw("ErrImagePull")).stuck == ("ErrImagePull", "container trainer: why ErrImagePull")
    assert pod_view(raw("CreateContainerConfigError", init=True)).stuck == (
        "CreateContainerConfigError", "container trainer: why CreateContainerConfigError")
