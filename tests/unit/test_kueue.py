"""Kueue's external-framework contract, pure: the Workload built for a queued job, Kueue's
answer read back (admission, flavors, eviction), and the passes of a queued job: gated until
admitted, run as admitted, stopped on eviction, the quota given back only once the workers
are gone, re-admission resumes, a finished job's Workload is marked Finished."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kubetrain import api
from kubetrain.controller import kueue
from kubetrain.controller import names as n
from kubetrain.controller.builders import JobRef, build_pod
from kubetrain.controller.observed import Observed, PodView
from kubetrain.controller.reconcile import (
    R_ADMITTED,
    R_PREEMPTED,
    R_QUEUED,
    Create,
    DeletePod,
    Job,
    PatchWorkloadStatus,
    Settings,
    reconcile,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
REF = JobRef("demo", "ns", "uid-12345")
WL_NAME = "trainingjob-demo-uid-1"
GPU_SPEC = {"workers": {"replicas": 4, "gpusPerWorker": 4, "priorityClassName": "high",
                        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}}
ELASTIC = {"workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 4, "gpusPerWorker": 4}}


def make_job(spec: dict[str, Any], status: dict[str, Any] | None = None, queue: str | None = "team-a") -> Job:
    labels = {kueue.QUEUE_LABEL: queue} if queue else {}
    return Job.from_object({"metadata": {"name": "demo", "namespace": "ns", "uid": "uid-12345", "generation": 1,
                                         "labels": labels}, "spec": spec, "status": status or {}})


def workload(conds: dict[str, tuple[str, str, str]] | None = None, count: int | None = None,
             flavors: dict[str, str] | None = None, owner: str = "uid-12345", pod_count: int = 4) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": t, "status": st, "reason": r, "message": m}
                                             for t, (st, r, m) in (conds or {}).items()]}
    if flavors is not None:
        assignment: dict[str, Any] = {"name": "workers", "flavors": flavors}
        if count is not None:
            assignment["count"] = count
        status["admission"] = {"clusterQueue": "gpu-cq", "podSetAssignments": [assignment]}
    return {"apiVersion": kueue.API_VERSION, "kind": "Workload",
            "metadata": {"name": WL_NAME, "namespace": "ns", "uid": "wl-uid", "resourceVersion": "42",
                         "ownerReferences": [{"kind": "TrainingJob", "uid": owner}]},
            "spec": {"queueName": "team-a", "podSets": [{"name": "workers", "count": pod_count}]},
            "status": status}


PENDING = {"QuotaReserved": ("False", "Pending",
                             "couldn't assign flavors to pod set workers: insufficient unused quota for "
                             "nvidia.com/gpu in flavor gpu, 16 more needed")}
ADMITTED = {"QuotaReserved": ("True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
            "Admitted": ("True", "Admitted", "The workload is admitted")}
EVICTED = {**ADMITTED, "Evicted": ("True", "Preempted", "Preempted to accommodate a workload (UID: x) due to "
                                   "prioritization in the ClusterQueue"),
           "Preempted": ("True", "InClusterQueue", "Preempted to accommodate a workload")}


def queue_state(obj: dict[str, Any] | None, flavors: list[dict[str, Any]] = ()) -> kueue.QueueState:  # type: ignore[assignment]
    wl = kueue.view(obj) if obj is not None else None
    if wl is not None and flavors:
        from dataclasses import replace
        wl = replace(wl, placement=kueue.placement(list(flavors)))
    return kueue.QueueState(wl, "gpu-cq", 1000)


def worker(index: int, phase: str = "Running", deleting: bool = False) -> PodView:
    return PodView(name=n.pod_name("demo", index, 0, 0), index=index, phase=phase, ready=phase == "Running",
                   deleting=deleting, nnodes="4:4")


def run(job: Job, obj: dict[str, Any] | None, pods: tuple[PodView, ...] = (),
        flavors: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    return reconcile(job, Observed(pods=pods, queue=queue_state(obj, flavors)), T0, Settings(trainer_image="t:1"))


# ------------------------------------------------------------------------------ the Workload


def test_workload_has_the_pod_template_requests_priority_and_owner() -> None:
    spec = api.TrainingJobSpec.model_validate(GPU_SPEC)
    pod = build_pod(REF, spec, 0, 0, 0)
    wl = kueue.build_workload(REF, spec, "team-a", pod, 1000)
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    assert wl["metadata"]["name"] == "trainingjob-demo-uid-1"
    assert wl["metadata"]["ownerReferences"] == [REF.owner_reference()]
    assert wl["metadata"]["labels"][n.LABEL_JOB] == n.job_label("demo")
    assert wl["spec"]["queueName"] == "team-a"
    assert wl["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    assert wl["spec"]["priority"] == 1000
    (ps,) = wl["spec"]["podSets"]
    assert ps["name"] == "workers" and ps["count"] == 4 and "minCount" not in ps
    requests = ps["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["nvidia.com/gpu"] in (4, "4") and requests["cpu"] == "2" and requests["memory"] == "8Gi"


def test_elastic_workload_asks_for_partial_admission() -> None:
    spec = api.TrainingJobSpec.model_validate(ELASTIC)
    wl = kueue.build_workload(REF, spec, "q", build_pod(REF, spec, 0, 0, 0), None)
    (ps,) = wl["spec"]["podSets"]
    assert ps["count"] == 4 and ps["minCount"] == 2
    assert "priority" not in wl["spec"] and "priorityClassRef" not in wl["spec"]


def test_view_reads_admission_flavors_count_and_message() -> None:
    v = kueue.view(workload(ADMITTED, count=2, flavors={"nvidia.com/gpu": "gpu", "cpu": "default"}))
    assert v.admitted and v.quota_reserved and not v.evicted
    assert v.cluster_queue == "gpu-cq" and v.admitted_count == 2 and v.flavors == ("default", "gpu")
    full = kueue.view(workload(ADMITTED, flavors={"nvidia.com/gpu": "gpu"}))
    assert full.admitted_count == 4  # no count in the assignment: the whole pod set
    pending = kueue.view(workload(PENDING))
    assert not pending.admitted and "insufficient unused quota" in pending.message
    ev = kueue.view(workload(EVICTED, flavors={"nvidia.com/gpu": "gpu"}))
    assert ev.evicted and ev.preempted and ev.stop_reason == "Preempted"
    assert ev.message.startswith("Preempted to accommodate a workload (UID: x)")


def test_placement_merges_node_labels_and_tolerations() -> None:
    t = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    p = kueue.placement([{"spec": {"nodeLabels": {"pool": "a100"}, "tolerations": [t]}},
                         {"spec": {"nodeLabels": {"zone": "z1"}, "tolerations": [t]}}])
    assert p.node_selector == {"pool": "a100", "zone": "z1"} and p.tolerations == (t,)


def test_release_patch_gives_the_quota_back_guarded_by_resource_version() -> None:
    v = kueue.view(workload(EVICTED, flavors={"nvidia.com/gpu": "gpu"}))
    patch = kueue.release_patch(v, T0)
    assert patch["metadata"]["resourceVersion"] == "42" and patch["status"]["admission"] is None
    conds = {c["type"]: c for c in patch["status"]["conditions"]}
    assert conds["QuotaReserved"]["status"] == "False" and conds["QuotaReserved"]["reason"] == "Pending"
    assert conds["Admitted"]["status"] == "False"
    assert conds["Requeued"]["status"] == "True"  # a preemption is requeued at once
    assert conds["Evicted"]["status"] == "True"  # Kueue resets it when it reserves quota again


def test_finish_patch_marks_finished() -> None:
    v = kueue.view(workload(ADMITTED, flavors={"nvidia.com/gpu": "gpu"}))
    conds = {c["type"]: c for c in kueue.finish_patch(v, False, "boom", T0)["status"]["conditions"]}
    assert conds["Finished"] == {**conds["Finished"], "status": "True", "reason": "Failed", "message": "boom"}
    assert conds["Admitted"]["status"] == "True"


# ------------------------------------------------------------------------------ the passes


def test_unqueued_job_is_untouched() -> None:
    d = reconcile(make_job(GPU_SPEC, queue=None), Observed(), T0, Settings())
    assert d.status.phase == "Pending" and any(isinstance(a, Create) and a.kind == "Pod" for a in d.actions)
    assert not any(isinstance(a, Create) and a.kind == "Workload" for a in d.actions)


def test_queued_job_creates_its_workload_and_no_pod() -> None:
    d = run(make_job(GPU_SPEC), None)
    kinds = [a.kind for a in d.actions if isinstance(a, Create)]
    assert kinds == ["Workload"]
    assert d.status.phase == "Suspended"
    cond = next(c for c in d.status.conditions or [] if c.type == "Suspended")
    assert cond.status == "True" and cond.reason == R_QUEUED and "queue team-a (ClusterQueue gpu-cq)" in cond.message
    wl = d.actions[0].manifest  # type: ignore[union-attr]
    assert wl["spec"]["priority"] == 1000


def test_waiting_job_says_why_in_kueues_words() -> None:
    d = run(make_job(GPU_SPEC), workload(PENDING))
    assert d.status.phase == "Suspended" and not d.actions
    cond = next(c for c in d.status.conditions or [] if c.type == "Suspended")
    assert cond.reason == R_QUEUED and "insufficient unused quota for nvidia.com/gpu" in cond.message
    assert WL_NAME in cond.message
    assert [e.reason for e in d.events] == [R_QUEUED]
    again = run(make_job(GPU_SPEC, d.status.model_dump(by_alias=True, exclude_none=True, mode="json")),
                workload(PENDING))
    assert not again.events  # said once


def test_admitted_job_runs_on_the_flavor_with_the_admitted_count() -> None:
    queued = run(make_job(ELASTIC), workload(PENDING)).status.model_dump(by_alias=True, exclude_none=True,
                                                                          mode="json")
    t = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    d = run(make_job(ELASTIC, queued), workload(ADMITTED, count=2, flavors={"nvidia.com/gpu": "a100"}),
            flavors=[{"spec": {"nodeLabels": {"pool": "a100"}, "tolerations": [t]}}])
    pods = d.pods_to_create
    assert len(pods) == 2  # partial admission: 2 of 4
    for p in pods:
        assert p.manifest["spec"]["nodeSelector"] == {"pool": "a100"}
        assert t in p.manifest["spec"]["tolerations"]
    cond = next(c for c in d.status.conditions or [] if c.type == "Suspended")
    assert cond.status == "False" and cond.reason == R_ADMITTED and "2 of 4 workers" in cond.message
    assert "ClusterQueue gpu-cq" in cond.message
    assert d.status.phase == "Pending"
    assert R_ADMITTED in [e.reason for e in d.events]


def test_eviction_stops_workers_then_releases_the_quota_then_resumes() -> None:
    running = {"phase": "Running", "startTime": "2026-03-01T11:00:00Z",
               "conditions": [{"type": "Suspended", "status": "False", "reason": R_ADMITTED, "message": "",
                               "lastTransitionTime": "2026-03-01T11:00:00Z"}]}
    evicted = workload(EVICTED, flavors={"nvidia.com/gpu": "gpu"})
    pods = tuple(worker(i) for i in range(4))
    d = run(make_job(GPU_SPEC, running), evicted, pods)
    assert sorted(a.name for a in d.actions if isinstance(a, DeletePod)) == sorted(p.name for p in pods)
    assert not [a for a in d.actions if isinstance(a, PatchWorkloadStatus)]  # not while workers stop
    cond = next(c for c in d.status.conditions or [] if c.type == "Suspended")
    assert d.status.phase == "Suspended" and cond.reason == R_PREEMPTED and "Preempted to accommodate" in cond.message
    assert [e.type for e in d.events] == ["Warning"]
    stopping = d.status.model_dump(by_alias=True, exclude_none=True, mode="json")

    d2 = run(make_job(GPU_SPEC, stopping), evicted, tuple(worker(i, deleting=True) for i in range(4)))
    assert not [a for a in d2.actions if isinstance(a, PatchWorkloadStatus)]
    d3 = run(make_job(GPU_SPEC, stopping), evicted, ())
    (release,) = [a for a in d3.actions if isinstance(a, PatchWorkloadStatus)]
    assert release.name == WL_NAME and release.patch["status"]["admission"] is None

    released = kueue.release_patch(kueue.view(evicted), T0)["status"]
    back = {**evicted, "status": {"conditions": released["conditions"]}}
    d4 = run(make_job(GPU_SPEC, stopping), back, ())
    assert d4.status.phase == "Suspended" and not d4.actions  # waits, quota already released

    readmitted = workload({**ADMITTED, "Evicted": ("False", "QuotaReserved", "")}, flavors={"nvidia.com/gpu": "gpu"})
    d5 = run(make_job(GPU_SPEC, stopping), readmitted, ())
    assert len(d5.pods_to_create) == 4 and d5.status.phase == "Pending"
    assert any(e.reason == R_ADMITTED and "resuming from the last checkpoint" in e.message for e in d5.events)


def test_deleted_workload_is_recreated_and_the_job_stops() -> None:
    running = {"phase": "Running", "startTime": "2026-03-01T11:00:00Z"}
    d = run(make_job(GPU_SPEC, running), None, tuple(worker(i) for i in range(4)))
    assert [a.kind for a in d.actions if isinstance(a, Create)] == ["Workload"]
    assert len([a for a in d.actions if isinstance(a, DeletePod)]) == 4


def test_a_namesakes_workload_is_not_ours() -> None:
    d = run(make_job(GPU_SPEC), workload(ADMITTED, flavors={"nvidia.com/gpu": "gpu"}, owner="old-uid"))
    assert [a.kind for a in d.actions if isinstance(a, Create)] == ["Workload"]


@pytest.mark.parametrize(("phase", "reason"), [("Succeeded", "Succeeded"), ("Failed", "Failed")])
def test_finished_job_marks_its_workload_finished(phase: str, reason: str) -> None:
    done = {"phase": phase, "completionTime": "2026-03-01T11:00:00Z"}
    d = run(make_job(GPU_SPEC, done), workload(ADMITTED, flavors={"nvidia.com/gpu": "gpu"}))
    (fin,) = [a for a in d.actions if isinstance(a, PatchWorkloadStatus)]
    conds = {c["type"]: c for c in fin.patch["status"]["conditions"]}
    assert conds["Finished"]["status"] == "True" and conds["Finished"]["reason"] == reason
    finished = workload({**ADMITTED, "Finished": ("True", reason, "")}, flavors={"nvidia.com/gpu": "gpu"})
    assert not [a for a in run(make_job(GPU_SPEC, done), finished).actions if isinstance(a, PatchWorkloadStatus)]


def test_user_suspend_wins_over_admission() -> None:
    spec = {**GPU_SPEC, "runPolicy": {"suspend": True}}
    d = run(make_job(spec), workload(ADMITTED, flavors={"nvidia.com/gpu": "gpu"}))
    assert d.status.phase == "Suspended" and not d.pods_to_create
