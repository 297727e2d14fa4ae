"""TrainingJobs queued by the real Kueue (v0.17 manager from the Go module proxy, its own CRDs,
RBAC and webhooks; tests/cluster/kueue.py) and reconciled by the operator under its own
ServiceAccount. KWOK GPU nodes (8 `nvidia.com/gpu` each) run the pods; two of them carry the
ResourceFlavor's node label, so an admitted job's pods can only land there. Each test gets its own
ClusterQueue of 16 GPUs (manifests/kueue/example-queues.yaml, scoped to the test's namespace)
and the LocalQueue `team-a`.

The checkpoint-and-resume of an evicted job with real trainer processes is in
tests/e2e/test_kueue.py; here the harness finishes pods as their containers would."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.controller.kueue import QUEUE_LABEL
from tests.cluster import kueue
from tests.cluster.helpers import Cluster, wait_for
from tests.cluster.test_operator import (
    Operator,
    apply,
    condition,
    events,
    names,
    pods,
    status,
    tj,
    wait_phase,
    wait_running,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "kueue" / "example-queues.yaml"
POOL_LABEL = "kubetrain.dev/gpu-pool"
KUEUE_PRIORITIES = {"kueue-low": 100, "kueue-high": 1000}  # for the kueue_manager fixture (conftest)
KUEUE_FLAVORS = [next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "ResourceFlavor")]
WL = "workloads.kueue.x-k8s.io"


@pytest.fixture
def queues(cluster: Cluster, namespace: str, kueue_manager: kueue.KueueManager) -> Iterator[str]:
    """This test's ClusterQueue (16 GPUs, the example's, only for this namespace) and LocalQueue
    team-a; nodes 0 and 1 carry the flavor's label (16 GPUs). Yields the ClusterQueue's name."""
    example = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    cq = next(d for d in example if d["kind"] == "ClusterQueue")
    lq = next(d for d in example if d["kind"] == "LocalQueue")
    cq["metadata"]["name"] = f"cq-{namespace}"[:63]
    cq["spec"]["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    lq["metadata"]["namespace"] = namespace
    lq["spec"]["clusterQueue"] = cq["metadata"]["name"]
    for i in range(cluster.node_count):
        cluster.kubectl("label", "node", f"kwok-node-{i}", f"{POOL_LABEL}={'true' if i < 2 else 'false'}",
                        "--overwrite")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(cq))
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(lq))
    wait_for(lambda: condition(cluster.kubectl_json("get", "clusterqueue", cq["metadata"]["name"]).get("status") or {},
                               "Active").get("status") == "True", 30, "the ClusterQueue Active")
    try:
        yield cq["metadata"]["name"]
    finally:
        print(kueue_manager.logs(30))
        cluster.kubectl("delete", "tj", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "clusterqueue", cq["metadata"]["name"], "--wait=false", check=False)


def queued(name: str, replicas: int, gpus: int = 8, priority: str | None = None, **workers: Any) -> dict[str, Any]:
    obj = tj(name, workers={"replicas": replicas, "gpusPerWorker": gpus, **workers,
                            **({"priorityClassName": priority} if priority else {})})
    obj["metadata"]["labels"] = {QUEUE_LABEL: "team-a"}
    return obj


def workload(cluster: Cluster, namespace: str, job: str) -> dict[str, Any] | None:
    items = cluster.kubectl_json("get", WL, "-n", namespace)["items"]
    mine = [w for w in items if any(r.get("name") == job for r in w["metadata"].get("ownerReferences") or [])]
    assert len(mine) <= 1, f"more than one Workload for {job}: {[w['metadata']['name'] for w in mine]}"
    return mine[0] if mine else None


def wl_condition(wl: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return condition((wl or {}).get("status") or {}, type_)


def explained(cluster: Cluster, namespace: str, job: str, error: Exception) -> AssertionError:
    """A timeout with the job's and its Workload's status."""
    wl = workload(cluster, namespace, job)
    return AssertionError(f"{error}\njob status: {json.dumps(status(cluster, namespace, job), indent=1)}\n"
                          f"Workload: {json.dumps(wl, indent=1)}")


def wait_admitted(cluster: Cluster, namespace: str, job: str, timeout: float = 30) -> dict[str, Any]:
    try:
        return wait_for(lambda: wl_condition(w := workload(cluster, namespace, job), "Admitted").get("status")
                        == "True" and w, timeout, f"{job}'s Workload Admitted")
    except TimeoutError as e:
        raise explained(cluster, namespace, job, e) from None


def wait_queued(cluster: Cluster, namespace: str, job: str, timeout: float = 30) -> dict[str, Any]:
    """The job Suspended for the reason Queued with Kueue's own word on why it waits."""
    def ok() -> dict[str, Any] | None:
        s = status(cluster, namespace, job)
        c = condition(s, "Suspended")
        waits = wl_condition(workload(cluster, namespace, job), "QuotaReserved")
        kueue_says = waits.get("message", "") if waits.get("status") == "False" else ""
        return s if s.get("phase") == "Suspended" and c.get("reason") == "Queued" and kueue_says \
            and kueue_says in c.get("message", "") else None

    try:
        return wait_for(ok, timeout, f"{job} Suspended/Queued with Kueue's reason")
    except TimeoutError as e:
        raise explained(cluster, namespace, job, e) from None


def finish(cluster: Cluster, namespace: str, job: str) -> None:
    """Worker 0 exits 0: the job Succeeded (the operator cleans the others)."""
    cluster.terminate_pod(namespace, names(pods(cluster, namespace, job))[0], 0)


# ------------------------------------------------------------------------------------- tests


def test_the_second_job_waits_for_quota_and_runs_when_the_first_finishes(
        cluster: Cluster, namespace: str, queues: str, op: Operator) -> None:
    apply(cluster, namespace, queued("first", 2))
    wl = wait_admitted(cluster, namespace, "first")
    # The Workload as Kueue sees it: one pod set of 2 pods of 8 GPUs, owned by the job.
    pod_set = wl["spec"]["podSets"][0]
    assert pod_set["count"] == 2 and wl["spec"]["queueName"] == "team-a"
    limits = pod_set["template"]["spec"]["containers"][0]["resources"]
    assert limits["requests"]["nvidia.com/gpu"] in (8, "8")
    assert wl["status"]["admission"]["clusterQueue"] == queues
    ps = wait_running(cluster, namespace, "first", 2)
    # The flavor's node labels: only the two pool nodes.
    assert all(p["spec"]["nodeSelector"].get(POOL_LABEL) == "true" for p in ps)
    assert {p["spec"]["nodeName"] for p in ps} <= {"kwok-node-0", "kwok-node-1"}
    s = status(cluster, namespace, "first")
    assert condition(s, "Suspended").get("reason") == "Admitted", s
    first_row = next(line for line in cluster.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
                     if line.startswith("first "))
    assert "Admitted" in first_row.split(), first_row
    assert queues in condition(s, "Suspended")["message"]

    apply(cluster, namespace, queued("second", 2))
    s = wait_queued(cluster, namespace, "second")
    message = condition(s, "Suspended")["message"]
    assert "team-a" in message and queues in message and "nvidia.com/gpu" in message, message
    assert not pods(cluster, namespace, "second", live=False)
    wl2 = workload(cluster, namespace, "second")
    assert wl2 is not None and wl_condition(wl2, "QuotaReserved").get("status") == "False"
    # What users see: the phase in `kubectl get tj`, the queue and Kueue's message in describe.
    row = next(line for line in cluster.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
               if line.startswith("second "))
    assert "Suspended" in row.split() and "Queued" in row.split(), row
    described = cluster.kubectl("describe", "tj", "second", "-n", namespace).stdout
    assert "Queued" in described and "insufficient" in described, described

    finish(cluster, namespace, "first")
    wait_phase(cluster, namespace, "first", "Succeeded")
    assert wl_condition(workload(cluster, namespace, "first"), "Finished").get("status") == "True"
    wait_admitted(cluster, namespace, "second")
    wait_running(cluster, namespace, "second", 2)
    assert "Admitted" in events(cluster, namespace, "second")


def test_a_higher_priority_job_preempts_and_the_victim_resumes(
        cluster: Cluster, namespace: str, queues: str, op: Operator) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + ".000000Z"
    apply(cluster, namespace, queued("low", 2, priority="kueue-low"))
    wl = wait_admitted(cluster, namespace, "low")
    assert wl["spec"]["priority"] == KUEUE_PRIORITIES["kueue-low"]
    first = wait_running(cluster, namespace, "low", 2)
    victims, victim_uids = names(first), {p["metadata"]["uid"] for p in first}

    apply(cluster, namespace, queued("high", 2, priority="kueue-high"))
    # Kueue evicts the victim's Workload; the operator deletes its workers (SIGTERM: they
    # checkpoint and exit 75), then gives the quota back; only then is `high` admitted.
    s = wait_for(lambda: (x := status(cluster, namespace, "low")).get("phase") == "Suspended"
                 and condition(x, "Suspended").get("reason") in ("Preempted", "Queued") and x, 30,
                 "low preempted")
    wait_for(lambda: not set(victims) & set(names(pods(cluster, namespace, "low", live=False))), 30,
             "the victim's workers gone")
    try:
        wait_admitted(cluster, namespace, "high")
    except AssertionError as e:
        raise explained(cluster, namespace, "low", e) from None
    wait_running(cluster, namespace, "high", 2)
    assert "Preempted" in events(cluster, namespace, "low")
    preempted = [m for m in (e["message"] for e in cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=low,reason=Preempted")["items"])]
    assert any("checkpoint" in m for m in preempted), preempted
    wl = workload(cluster, namespace, "low")
    assert wl_condition(wl, "Preempted").get("status") == "True" or \
        wl_condition(wl, "Requeued").get("reason") == "Preempted", json.dumps(wl.get("status") if wl else None)
    s = wait_queued(cluster, namespace, "low")
    assert s["restarts"]["failure"] == 0, s["restarts"]

    finish(cluster, namespace, "high")
    wait_phase(cluster, namespace, "high", "Succeeded")
    wait_admitted(cluster, namespace, "low")
    resumed = wait_running(cluster, namespace, "low", 2)
    # new pods (same names: a suspension is not a restart), resuming from the checkpoint
    assert not victim_uids & {p["metadata"]["uid"] for p in resumed}
    assert status(cluster, namespace, "low")["restarts"]["failure"] == 0
    assert "Admitted" in events(cluster, namespace, "low")
    op.stop()  # its watches end: the audit log records a watch when it completes
    wait_for(lambda: _try(assert_kueue_grants_used, cluster, since), 15, "the audit log to show every Kueue grant used")
    assert_kueue_grants_used(cluster, since)


def _try(check: Any, *args: Any) -> bool:
    try:
        check(*args)
        return True
    except AssertionError:
        return False


def assert_kueue_grants_used(cluster: Cluster, since: str) -> None:
    """The API server's audit log of the operator's ServiceAccount since `since`: nothing refused,
    and every Kueue grant of manifests/rbac.yaml that test_rbac_audit.py cannot exercise (no
    Kueue there) used here: create/list/watch Workloads, patch their status (the release after
    the eviction, Finished), get the LocalQueue, the ResourceFlavor and the PriorityClass."""
    from tests.cluster.test_rbac_audit import ALLOWED_UNUSED, audited, grant_of, granted

    events = audited(cluster, since)
    refused = [(e["verb"], e.get("requestURI")) for e in events if e["responseStatus"]["code"] == 403]
    assert not refused, refused
    used = {g for g in map(grant_of, events) if g is not None}
    grants, _ = granted()
    assert used <= grants, used - grants
    kueue_grants = {g for g, why in ALLOWED_UNUSED.items() if "kueue" in why.lower()}
    assert kueue_grants and kueue_grants <= used, kueue_grants - used


def test_an_elastic_job_is_admitted_partially(cluster: Cluster, namespace: str, queues: str,
                                              op: Operator) -> None:
    apply(cluster, namespace, queued("holder", 1))  # 8 of 16 GPUs left
    wait_running(cluster, namespace, "holder", 1)
    apply(cluster, namespace, queued("elastic", 4, gpus=4, minReplicas=2, maxReplicas=4))
    wl = wait_admitted(cluster, namespace, "elastic")
    assert wl["spec"]["podSets"][0]["count"] == 4 and wl["spec"]["podSets"][0]["minCount"] == 2
    assert wl["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    wait_running(cluster, namespace, "elastic", 2)
    # Kueue v0.17 grows a partially admitted Workload only through workload slices (alpha, off):
    # when quota frees the job stays at 2 (docs/kueue.md, "Limits").
    finish(cluster, namespace, "holder")
    wait_phase(cluster, namespace, "holder", "Succeeded")
    wl = workload(cluster, namespace, "elastic")
    assert wl is not None and wl["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    assert len(pods(cluster, namespace, "elastic")) == 2


def test_deleting_the_job_deletes_its_workload(cluster: Cluster, namespace: str, queues: str,
                                               op: Operator) -> None:
    apply(cluster, namespace, queued("gone", 1))
    wait_admitted(cluster, namespace, "gone")
    cluster.kubectl("delete", "tj", "gone", "-n", namespace)
    # The garbage collector (kube-controller-manager) deletes it by its owner reference. It
    # watches a new CRD's objects only after its next discovery resync (every 30 s), and Kueue's
    # CRDs were installed by this module's fixture moments ago: hence the deadline.
    wait_for(lambda: workload(cluster, namespace, "gone") is None
             and not cluster.kubectl_json("get", WL, "-n", namespace)["items"], 75, "the Workload collected")
    # A Workload deleted under a live job is created again.
    apply(cluster, namespace, queued("again", 1))
    first = wait_admitted(cluster, namespace, "again")
    cluster.kubectl("delete", WL, first["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for(lambda: (w := workload(cluster, namespace, "again")) is not None
             and w["metadata"]["uid"] != first["metadata"]["uid"], 30, "a new Workload")
    wait_admitted(cluster, namespace, "again")
    wait_running(cluster, namespace, "again", 1)


def test_operator_restarted_mid_admission_duplicates_nothing(cluster: Cluster, namespace: str, queues: str,
                                                            op: Operator) -> None:
    apply(cluster, namespace, queued("hold", 2))
    wait_running(cluster, namespace, "hold", 2)
    for round_ in range(3):
        name = f"restart{round_}"
        apply(cluster, namespace, queued(name, 2))
        wait_for(lambda job=name: workload(cluster, namespace, job), 20, f"{name}'s Workload")
        op.kill()
        op.start()
        wait_queued(cluster, namespace, name)
    finish(cluster, namespace, "hold")
    # Each queued job has one Workload (workload() asserts it) and the queue admits them one at a
    # time (16 GPUs each, 16 in the queue), in the order Kueue picks: BestEffortFIFO moves a head
    # it found inadmissible behind the next one, so restart2 may well run before restart1.
    waiting = [f"restart{round_}" for round_ in range(3)]
    while waiting:
        def admitted() -> str | None:
            return next((job for job in waiting if wl_condition(workload(cluster, namespace, job), "Admitted")
                         .get("status") == "True"), None)

        try:
            name = wait_for(admitted, 40, f"one of {waiting} Admitted")
        except TimeoutError as e:
            raise explained(cluster, namespace, waiting[0], e) from None
        waiting.remove(name)
        ps = wait_running(cluster, namespace, name, 2)
        assert len(pods(cluster, namespace, name, live=False)) == 2
        op.kill()
        op.start()
        finish(cluster, namespace, name)
        wait_phase(cluster, namespace, name, "Succeeded")
        # no worker beyond the first two (finished ones may be cleaned up, never added)
        assert set(names(pods(cluster, namespace, name, live=False))) <= set(names(ps))
    assert len(cluster.kubectl_json("get", WL, "-n", namespace)["items"]) == 4
