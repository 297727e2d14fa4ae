"""Kueue's external-framework contract (Kueue v0.17, API kueue.x-k8s.io/v1beta2), pure.

Kueue does not mutate or watch a TrainingJob itself: with `integrations.externalFrameworks:
["TrainingJob.v1alpha1.kubetrain.dev"]` it only knows that Workloads owned by TrainingJobs
belong to an external controller. That controller (the operator) owns everything else:

- a job labelled `kueue.x-k8s.io/queue-name` is *gated*: it runs no pod until its Workload is
  admitted (the operator cannot suspend it at creation without a mutating webhook, and Kueue has
  none for external kinds);
- `build_workload` is its Workload: one pod set of `workers.replicas` pods with the worker pod's
  template (so its requests: GPUs, CPU, memory), the priority class (and its value: Kueue's
  webhook does not resolve it for external frameworks), `minCount = minReplicas` for elastic
  jobs (partial admission), owned by the job;
- `view` reads Kueue's answer: admission (ClusterQueue, flavors, admitted count), eviction
  (Evicted / Preempted conditions and Kueue's message), finish;
- after an eviction the owner stops its pods and then gives the quota back
  (`release_patch`, what Kueue's own job reconciler does); a finished job marks the Workload
  Finished (`finish_patch`).
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from kubetrain import api
from kubetrain.controller import names as n
from kubetrain.controller.builders import JobRef

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
KIND = "Workload"
PLURAL = "workloads"
POD_SET = "workers"
FRAMEWORK = "TrainingJob.v1alpha1.kubetrain.dev"  # Kueue's integrations.externalFrameworks entry

# Workload condition types (Kueue v1beta2)
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
PREEMPTED = "Preempted"
REQUEUED = "Requeued"
FINISHED = "Finished"


def queue_name(metadata: dict[str, Any]) -> str | None:
    """The LocalQueue a job asks for (None: not managed by Kueue)."""
    value = ((metadata or {}).get("labels") or {}).get(QUEUE_LABEL)
    return str(value) if value else None


def workload_name(job: JobRef) -> str:
    """Deterministic (a replayed pass creates nothing twice) and distinct from a deleted
    namesake's Workload still being collected (the uid's head)."""
    return f"trainingjob-{job.name[:200]}-{job.uid[:5]}"


def build_workload(
    job: JobRef, spec: api.TrainingJobSpec, queue: str, pod: dict[str, Any], priority: int | None,
) -> dict[str, Any]:
    """The Workload of a queued job: `pod` is worker 0's manifest (builders.build_pod), whose
    spec is the template Kueue sums the requests of."""
    w = spec.workers
    template_meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k in ("labels", "annotations")}
    pod_spec = copy.deepcopy(pod["spec"])
    for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        # What Kubernetes defaults (a request missing where a limit is set takes the limit's
        # value, e.g. nvidia.com/gpu): Kueue counts requests.
        resources = container.get("resources") or {}
        if resources.get("limits"):
            resources["requests"] = {**resources["limits"], **(resources.get("requests") or {})}
    pod_set: dict[str, Any] = {
        "name": POD_SET,
        "count": w.replicas,
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if w.min < w.replicas:
        pod_set["minCount"] = w.min  # partial admission (Kueue's PartialAdmission feature)
    wl_spec: dict[str, Any] = {"queueName": queue, "podSets": [pod_set]}
    if w.priority_class_name:
        wl_spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                                       "name": w.priority_class_name}
    if priority is not None:
        wl_spec["priority"] = priority
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": {**job.labels(), QUEUE_LABEL: queue},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": wl_spec,
    }


@dataclass(frozen=True)
class Placement:
    """What an admission asks of the pods: the flavors' node labels and tolerations."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def placement(flavors: list[dict[str, Any]]) -> Placement:
    """Merge the ResourceFlavors of an admission (their spec.nodeLabels and spec.tolerations)."""
    labels: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for flavor in flavors:
        fspec = flavor.get("spec") or {}
        labels.update({str(k): str(v) for k, v in (fspec.get("nodeLabels") or {}).items()})
        tolerations.extend(t for t in fspec.get("tolerations") or [] if t not in tolerations)
    return Placement(labels, tuple(tolerations))


@dataclass(frozen=True)
class WorkloadView:
    """Kueue's answer about one Workload."""

    name: str
    uid: str
    resource_version: str
    owner_uid: str
    queue: str
    cluster_queue: str | None  # from the admission (else the LocalQueue's, filled by the caller)
    quota_reserved: bool
    admitted: bool
    admitted_count: int | None
    flavors: tuple[str, ...]
    evicted: bool
    evicted_reason: str
    preempted: bool
    finished: bool
    message: str  # Kueue's latest word: why it waits, why it evicted
    conditions: tuple[dict[str, Any], ...] = ()
    placement: Placement = field(default_factory=Placement)

    @property
    def stop_reason(self) -> str:
        """Preempted (by a higher priority or a reclaim), else Evicted."""
        return "Preempted" if self.preempted or self.evicted_reason == "Preempted" else "Evicted"


def _cond(conds: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conds if c.get("type") == type_), None)


def _true(conds: list[dict[str, Any]], type_: str) -> bool:
    c = _cond(conds, type_)
    return c is not None and c.get("status") == "True"


def view(obj: dict[str, Any]) -> WorkloadView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    conds = list(status.get("conditions") or [])
    admission = status.get("admission") or {}
    assignment = next((a for a in admission.get("podSetAssignments") or [] if a.get("name") == POD_SET), None)
    count = None
    flavors: tuple[str, ...] = ()
    if assignment is not None:
        count = assignment.get("count")
        if count is None:  # Kueue omits it when the whole pod set is admitted
            count = next((p.get("count") for p in spec.get("podSets") or [] if p.get("name") == POD_SET), None)
        flavors = tuple(sorted(set((assignment.get("flavors") or {}).values())))
    evicted = _cond(conds, EVICTED)
    owner = next((r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("kind") == "TrainingJob"), "")
    # Kueue's message: the eviction's while the evicted job still holds its quota, else why it
    # waits (QuotaReserved False: after a release too), else the admission's.
    reserved = _true(conds, QUOTA_RESERVED) and bool(admission)
    msg_from = [c for c in (evicted if _true(conds, EVICTED) and reserved else None, _cond(conds, QUOTA_RESERVED),
                            _cond(conds, ADMITTED), evicted) if c is not None and c.get("message")]
    return WorkloadView(
        name=str(meta.get("name", "")), uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")), owner_uid=str(owner),
        queue=str(spec.get("queueName", "")), cluster_queue=admission.get("clusterQueue"),
        quota_reserved=reserved,
        admitted=_true(conds, ADMITTED) and assignment is not None,
        admitted_count=None if count is None else int(count), flavors=flavors,
        evicted=_true(conds, EVICTED), evicted_reason=str((evicted or {}).get("reason", "")),
        preempted=_true(conds, PREEMPTED), finished=_true(conds, FINISHED),
        message=str(msg_from[0]["message"]) if msg_from else "", conditions=tuple(conds),
    )


def _set(conds: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
         now: dt.datetime, generation: int) -> list[dict[str, Any]]:
    """metav1.Condition semantics: lastTransitionTime moves only when the status changes."""
    new = {"type": type_, "status": "True" if status else "False", "reason": reason,
           "message": message[:32768], "observedGeneration": generation,
           "lastTransitionTime": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    out, seen = [], False
    for c in conds:
        if c.get("type") == type_:
            seen = True
            if c.get("status") == new["status"]:
                new["lastTransitionTime"] = c.get("lastTransitionTime", new["lastTransitionTime"])
            out.append(new)
        else:
            out.append(c)
    return out if seen else [*out, new]


def release_patch(wl: WorkloadView, now: dt.datetime, generation: int = 0) -> dict[str, Any]:
    """The status merge patch that gives an evicted Workload's quota back once its pods are
    gone (Kueue's job reconciler does the same for built-in kinds): Requeued (True after a
    preemption), QuotaReserved False/Pending with Kueue's message, Admitted False, no admission.
    Guarded by the Workload's resourceVersion (conditions are replaced as a whole)."""
    conds = list(wl.conditions)
    conds = _set(conds, REQUEUED, wl.evicted_reason in ("Preempted", "NodeFailures"), wl.evicted_reason or "Evicted",
                 wl.message, now, generation)
    conds = _set(conds, QUOTA_RESERVED, False, "Pending", wl.message, now, generation)
    conds = _set(conds, ADMITTED, False, "NoReservation", "The workload has no reservation", now, generation)
    return {"metadata": {"resourceVersion": wl.resource_version},
            "status": {"conditions": conds, "admission": None}}


def finish_patch(wl: WorkloadView, succeeded: bool, message: str, now: dt.datetime,
                 generation: int = 0) -> dict[str, Any]:
    """Finished=True (reason Succeeded or Failed): Kueue releases the quota."""
    conds = _set(list(wl.conditions), FINISHED, True, "Succeeded" if succeeded else "Failed", message, now, generation)
    return {"metadata": {"resourceVersion": wl.resource_version}, "status": {"conditions": conds}}


def admitted_spec(spec: api.TrainingJobSpec, wl: WorkloadView) -> api.TrainingJobSpec:
    """The spec the pods are built from once admitted: the admitted count (partial admission
    of an elastic job) and the flavors' node labels and tolerations on top of the user's."""
    w = spec.workers
    count = w.replicas if wl.admitted_count is None else max(w.min, min(w.replicas, wl.admitted_count))
    node_selector = {**(w.node_selector or {}), **wl.placement.node_selector} or None
    tolerations = [*(w.tolerations or []), *(t for t in wl.placement.tolerations if t not in (w.tolerations or []))]
    workers = w.model_copy(update={"replicas": count, "node_selector": node_selector,
                                   "tolerations": tolerations or None})
    return spec.model_copy(update={"workers": workers})


def describe(wl: WorkloadView | None, queue: str, cluster_queue: str | None) -> str:
    """Queue, ClusterQueue and Kueue's message, for the job's Suspended condition."""
    cq = (wl.cluster_queue if wl is not None and wl.cluster_queue else None) or cluster_queue or "?"
    where = f"queue {queue} (ClusterQueue {cq})"
    if wl is None:
        return f"{where}: creating Workload"
    return f"{where}, Workload {wl.name}: {wl.message}" if wl.message else f"{where}, Workload {wl.name}"


def selector() -> str:
    """Label selector of the operator's Workloads (its list-and-watch cache)."""
    return n.LABEL_JOB


@dataclass(frozen=True)
class QueueState:
    """What a pass of a queued job sees of Kueue (read by the handler)."""

    workload: WorkloadView | None  # None: there is none (yet, or it was deleted)
    cluster_queue: str | None = None  # the LocalQueue's spec.clusterQueue (None: no such queue)
    priority: int | None = None  # the PriorityClass' value (None: no class, or not found)
