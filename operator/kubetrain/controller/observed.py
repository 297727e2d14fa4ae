"""What the reconciler sees of the cluster: compact, immutable views of a job's pods.

Parsing the raw objects here keeps `reconcile` free of dictionary digging and lets its tests
build pods in one line.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubetrain.api.constants import EXIT_PREEMPTED, PERMANENT_EXIT_CODES
from kubetrain.api.progress import ProgressReport
from kubetrain.controller import names as n

if TYPE_CHECKING:
    from kubetrain.controller.kueue import QueueState

Outcome = Literal["running", "succeeded", "permanent", "retryable", "preempted", "lost"]

# Why a pod was taken away, by the reason of its DisruptionTarget condition (Kubernetes >= 1.26)
# or of its status; a pod deleted with neither was deleted by a client (kubectl delete, ...).
LOSS_CAUSES = {
    "EvictionByEvictionAPI": "evicted",
    "Evicted": "evicted by the kubelet",
    "PreemptionByScheduler": "preempted by the scheduler",
    "Preempting": "preempted by the scheduler",
    "DeletionByTaintManager": "node lost",
    "NodeLost": "node lost",
    "DeletionByPodGC": "node lost (pod garbage-collected)",
    "TerminationByKubelet": "terminated by the kubelet",
}

# The kubelet's reasons for a container that cannot start (its state.waiting): a pod that waits
# for one of these will not start by itself, so the job's status says so instead of "Pending".
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff",
})


@dataclass(frozen=True)
class PodView:
    name: str
    index: int
    generation: int = 0
    incarnation: int = 0
    phase: str = "Pending"  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    node: str | None = None
    unschedulable: str | None = None  # the scheduler's message while it cannot place the pod
    # (reason, message) of the kubelet while a container cannot start (STUCK_REASONS)
    stuck: tuple[str, str] | None = None
    deleting: bool = False
    exit_code: int | None = None
    reason: str = ""  # termination reason (trainer's JSON, else the container's or the pod's)
    message: str = ""  # termination message
    disrupted: bool = False  # evicted, preempted by the scheduler, node lost (DisruptionTarget)
    disruption: str = ""  # the DisruptionTarget condition's reason, else the pod status' reason
    nnodes: str = ""
    created: dt.datetime | None = None
    final_step: int | None = None  # from the launcher's termination record (a finished pod)
    final_loss: float | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def outcome(self) -> Outcome:
        """How the operator treats this pod, by the exit-code contract."""
        if not self.finished:
            return "running"
        if self.phase == "Succeeded":
            return "succeeded"
        if self.exit_code == EXIT_PREEMPTED:
            return "preempted"
        if self.exit_code is None or self.disrupted:
            # Killed from outside (eviction, node loss, admission refused): not the job's fault.
            return "lost"
        if self.exit_code in PERMANENT_EXIT_CODES:
            return "permanent"
        return "retryable"

    @property
    def loss_cause(self) -> str:
        """How the pod was taken away, in words, when it was (see LOSS_CAUSES)."""
        cause = LOSS_CAUSES.get(self.disruption) or LOSS_CAUSES.get(self.reason)
        if cause:
            return cause
        return "deleted" if self.deleting or not self.finished else "killed"


@dataclass(frozen=True)
class ProgressReading:
    """The last answer of a worker's /progress endpoint, and when it was read."""

    data: ProgressReport
    read_at: dt.datetime
    pod: str = ""


@dataclass(frozen=True)
class Observed:
    """The children of one job as listed just now (and its latest progress reading)."""

    pods: tuple[PodView, ...] = ()
    service: bool = False
    config_map_hash: str | None = None  # None: no ConfigMap
    pod_group_hash: str | None = None  # None: no PodGroup (or the job wants none)
    progress: ProgressReading | None = None
    # Pods that left the API since they were last seen, deleted by someone other than the
    # operator (their last state, from the pod watch): so that a loss is named even when the
    # pod was gone before a pass could list it.
    gone: tuple[PodView, ...] = ()
    # Kueue's side of a job labelled kueue.x-k8s.io/queue-name (None: not queued).
    queue: QueueState | None = None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _termination(message: str) -> tuple[str, str]:
    """(reason, message) of the launcher's `{reason, message, step}` JSON, or ("", text)."""
    text = (message or "").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return "", text
    if not isinstance(doc, dict):
        return "", text
    detail = str(doc.get("message") or "")
    if doc.get("step") is not None:
        detail = f"{detail} (step {doc['step']})" if detail else f"step {doc['step']}"
    return str(doc.get("reason") or ""), detail


def _final(message: str) -> tuple[int | None, float | None]:
    """(step, loss) of the launcher's termination record, when it has them."""
    try:
        doc = json.loads((message or "").strip())
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    step, loss = doc.get("step"), doc.get("loss")
    return (step if isinstance(step, int) else None,
            float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None)


def pod_view(pod: dict[str, Any], container: str = "trainer") -> PodView:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}

    statuses = status.get("containerStatuses") or []
    mine = next((s for s in statuses if s.get("name") == container), statuses[0] if statuses else {})
    terminated = (mine.get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    reason, message = _termination(terminated.get("message") or "")
    final_step, final_loss = _final(terminated.get("message") or "")
    reason = reason or terminated.get("reason") or status.get("reason") or ""
    message = message or status.get("message") or ""

    sched = conditions.get("PodScheduled") or {}
    unschedulable = None
    if sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        unschedulable = sched.get("message") or "unschedulable"
    stuck = _stuck(statuses, status.get("initContainerStatuses") or [])
    disruption = conditions.get("DisruptionTarget") or {}
    disrupted = disruption.get("status") == "True" or status.get("reason") in {"Evicted", "Preempting", "NodeLost"}
    cause = str(disruption.get("reason") or "") if disruption.get("status") == "True" else ""

    return PodView(
        name=meta.get("name", ""),
        index=_int(labels.get(n.LABEL_INDEX), -1),
        generation=_int(labels.get(n.LABEL_GENERATION)),
        incarnation=_int(labels.get(n.LABEL_INCARNATION)),
        phase=status.get("phase") or "Pending",
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        node=spec.get("nodeName"),
        unschedulable=unschedulable,
        stuck=stuck,
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        reason=str(reason),
        message=str(message),
        disrupted=disrupted,
        disruption=cause or str(status.get("reason") or ""),
        nnodes=(meta.get("annotations") or {}).get(n.ANNOTATION_NNODES, ""),
        created=_time(meta.get("creationTimestamp")),
        final_step=final_step,
        final_loss=final_loss,
    )


def _stuck(statuses: list[dict[str, Any]], init: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first container (init containers first) that waits for a reason it will not leave by
    itself, as (reason, "container <name>: <kubelet's message>")."""
    for cs in [*init, *statuses]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in STUCK_REASONS:
            detail = str(waiting.get("message") or reason)
            return reason, f"container {cs.get('name', '?')}: {detail}"
    return None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether `obj` belongs to the job with `uid` (not a namesake deleted a moment ago)."""
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])
