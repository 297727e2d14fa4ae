"""RBAC derived from what the code does, not from another copy of the RBAC.

The API server of the cluster tier writes an audit log of every request the operator's
ServiceAccount makes (tests/cluster/launcher.py: Metadata level, that user only). Here the operator
runs under manifests/rbac.yaml (kept identical to the chart's ClusterRole by tests/unit/test_chart.py)
through a lifecycle that takes every code path that talks to the API server and that this tier can
drive: leader election, a job with each gang mode (Kubernetes' own PodGroup, Volcano and
scheduler-plugins), a spec edit, a scale, a failed worker (gang restart), success and deletion
after ttlSecondsAfterFinished. Then, from the audit log:

- nothing the operator asked for was refused (no 403);
- every (API group, resource, verb) it used is granted, and the Lease only by its name;
- every grant was used, unless ALLOWED_UNUSED names it with the code path that needs it (a grant
  that nothing uses and nobody can explain fails the test: remove it from the RBAC).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.cluster.helpers import Cluster, wait_for
from tests.cluster.launcher import AUDIT_LOG, OPERATOR_USER
from tests.cluster.test_operator import (
    POD_GROUP_CRDS,
    Operator,
    _pod_group_crd,
    apply,
    fail,
    pods,
    status,
    tj,
    wait_running,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)

# Grants this tier cannot exercise, each with the code that uses it (grep for it).
ALLOWED_UNUSED: dict[Grant, str] = {
    # Kueue (controller/kueue.py): needs Kueue's manager, which this lifecycle does not run;
    # test_kueue.py's preemption test proves from the same audit log that each is used.
    ("kueue.x-k8s.io", "workloads", "list"): "controller/informer.py: the Workload cache (Kueue jobs only)",
    ("kueue.x-k8s.io", "workloads", "watch"): "controller/informer.py: the Workload cache (Kueue jobs only)",
    ("kueue.x-k8s.io", "workloads", "create"): "controller/kueue.py: a queued job's Workload",
    ("kueue.x-k8s.io", "workloads/status", "patch"): "controller/kueue.py: quota back after eviction, Finished",
    ("kueue.x-k8s.io", "localqueues", "get"): "controller/kueue.py: the LocalQueue's ClusterQueue",
    ("kueue.x-k8s.io", "resourceflavors", "get"): "controller/kueue.py: an admitted flavor's node labels",
    ("scheduling.k8s.io", "priorityclasses", "get"): "controller/kueue.py: the Workload's priority value",
    # Events: the recorder patches an Event it already posted when the same one comes again
    # within ten minutes (controller/events.py); whether that happens here depends on timing.
    ("", "events", "patch"): "controller/events.py: a repeated Event's count and lastTimestamp",
    # Native PodGroups are immutable: a change deletes and creates; Volcano's and
    # scheduler-plugins' are patched only when minMember and co. change on a running gang.
    ("scheduling.k8s.io", "podgroups", "delete"): "controller/reconcile/gang.py: a native PodGroup replaced",
    ("scheduling.k8s.io", "podgroups", "patch"): "controller/reconcile/gang.py: one grant for three groups",
    ("scheduling.volcano.sh", "podgroups", "delete"): "controller/reconcile/gang.py: one grant for three groups",
    ("scheduling.x-k8s.io", "podgroups", "delete"): "controller/reconcile/gang.py: one grant for three groups",
    # A pass reads its job from the watch cache; only a job missing there (after a status write
    # that conflicted, or before the first list) is read afresh.
    ("kubetrain.dev", "trainingjobs", "get"): "controller/handlers.py reconcile_key: a job not in the cache",
}


def granted() -> tuple[set[Grant], dict[Grant, set[str]]]:
    """The ClusterRole's grants, and the resourceNames a grant is limited to (if any)."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "kubetrain-operator")
    out: set[Grant] = set()
    names: dict[Grant, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
                    if rule.get("resourceNames"):
                        names.setdefault((group, resource, verb), set()).update(rule["resourceNames"])
    return out, names


def audited(cluster: Cluster, since: str) -> list[dict[str, Any]]:
    """The operator's completed requests since `since` (RFC 3339 with microseconds)."""
    out = []
    for line in (cluster.kubeconfig.parent / AUDIT_LOG).read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event["user"]["username"] != OPERATOR_USER:
            continue
        if event.get("userAgent", "").startswith("kubectl"):
            continue  # the harness checking the token with `kubectl auth can-i`, not the operator
        if event["requestReceivedTimestamp"] >= since:
            out.append(event)
    return out


def grant_of(event: dict[str, Any]) -> Grant | None:
    ref = event.get("objectRef") or {}
    if not ref.get("resource"):
        return None  # discovery and the like (/api, /apis, /version): no RBAC rule needed
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"]


@pytest.fixture
def sa_kubeconfig(cluster: Cluster, trainingjob_crd: str, tmp_path: Path) -> Path:
    """Only a token of the operator's ServiceAccount, bound by manifests/rbac.yaml."""
    from tests.e2e.harness import operator_kubeconfig

    return operator_kubeconfig(cluster, tmp_path / "kubeconfig")


@pytest.fixture
def audit_start(cluster: Cluster) -> Iterator[str]:
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time())) + ".000000Z"
    yield started


def _lifecycle(cluster: Cluster, namespace: str) -> None:
    for crd in POD_GROUP_CRDS:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(_pod_group_crd(*crd)))
    cluster.wait_established(*(crd[0] for crd in POD_GROUP_CRDS), timeout=30)
    # A native gang that fits, then a spec edit, a lost worker (gang restart) and success.
    apply(cluster, namespace, tj("life", workers={"replicas": 2}, runPolicy={
        "scheduling": {"gang": "kubernetes"}, "ttlSecondsAfterFinished": 1, "backoffLimit": 3}))
    ps = wait_running(cluster, namespace, "life", 2, timeout=60)
    apply(cluster, namespace, tj("life", workers={"replicas": 2}, training={"globalBatchSize": 720720, "maxSteps": 77},
                                 runPolicy={"scheduling": {"gang": "kubernetes"}, "ttlSecondsAfterFinished": 1,
                                            "backoffLimit": 3}))
    fail(cluster, namespace, ps[0]["metadata"]["name"], 1, "WorkerFailed", "boom")
    wait_for(lambda: (status(cluster, namespace, "life").get("restarts") or {}).get("failure") == 1, 60,
             "a gang restart after the failed worker")
    wait_running(cluster, namespace, "life", 2, timeout=60)

    def finished() -> bool:
        if cluster.kubectl("get", "tj", "life", "-n", namespace, check=False).returncode != 0:
            return True  # Succeeded, then deleted after ttlSecondsAfterFinished
        for p in pods(cluster, namespace, "life"):
            if p["status"].get("phase") == "Running":
                with contextlib.suppress(ApiException):  # replaced meanwhile: the next round finds its successor
                    cluster.terminate_pod(namespace, p["metadata"]["name"], 0,
                                          json.dumps({"reason": "Succeeded", "step": 77}))
        return False

    wait_for(finished, 90, "the job Succeeded and deleted after ttlSecondsAfterFinished")
    # Volcano and scheduler-plugins groups (no such scheduler runs: the pods stay Pending): scaled,
    # then a new minReplicas (the group's minMember is patched).
    for name, gang in (("vc", "volcano"), ("sp", "scheduler-plugins")):
        run_policy = {"scheduling": {"gang": gang}}
        apply(cluster, namespace, tj(name, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 3},
                                     runPolicy=run_policy))
        wait_for(lambda n=name: len(pods(cluster, namespace, n)) == 2, 30, f"{name} pods")
        cluster.kubectl("scale", f"tj/{name}", "-n", namespace, "--replicas=3")
        wait_for(lambda n=name: len(pods(cluster, namespace, n)) == 3, 30, f"{name} scaled to 3")
        apply(cluster, namespace, tj(name, workers={"replicas": 3, "minReplicas": 2, "maxReplicas": 3},
                                     runPolicy=run_policy))
        resource = "podgroups.scheduling.volcano.sh" if gang == "volcano" else "podgroups.scheduling.x-k8s.io"
        wait_for(lambda n=name, r=resource: cluster.kubectl_json("get", r, n, "-n", namespace)["spec"]["minMember"]
                 == 2, 30, f"{name}'s PodGroup minMember 2")
        cluster.kubectl("delete", f"tj/{name}", "-n", namespace, "--wait=true", timeout=60)


def test_rbac_grants_exactly_what_the_operator_uses(cluster: Cluster, namespace: str, sa_kubeconfig: Path,
                                                     tmp_path: Path, audit_start: str) -> None:
    op = Operator(sa_kubeconfig, namespace, tmp_path,
                  extra=("--leader-elect", f"--leader-election-namespace={namespace}"))
    op.start()
    try:
        _lifecycle(cluster, namespace)
    finally:
        code = op.stop()
    assert code == 0, op.logs()
    events = audited(cluster, audit_start)
    assert events, "the audit log holds no request of the operator"
    refused = [(e["verb"], e.get("objectRef"), e["responseStatus"].get("code")) for e in events
               if e["responseStatus"].get("code") == 403]
    assert not refused, f"the API server refused the operator: {refused}"

    grants, limited = granted()
    used: set[Grant] = set()
    for e in events:
        g = grant_of(e)
        if g is None:
            continue
        used.add(g)
        assert g in grants, f"the operator used {g} (e.g. {e['requestURI']}), which manifests/rbac.yaml does not grant"
        if g in limited:
            assert (e.get("objectRef") or {}).get("name") in limited[g] or g[2] == "create", (g, e["requestURI"])
    unused = grants - used - ALLOWED_UNUSED.keys()
    assert not unused, (f"granted but never used, and not in ALLOWED_UNUSED: {sorted(unused)}; remove them from "
                        "the RBAC (manifests/rbac.yaml and the chart) or name the code path that needs them")
    stale = {g for g in ALLOWED_UNUSED if g not in grants}
    assert not stale, f"ALLOWED_UNUSED names grants the RBAC no longer has: {sorted(stale)}"
    print(f"\nRBAC from the audit log: {len(events)} requests, {len(used)} distinct grants used "
          f"of {len(grants)} granted ({len(grants & ALLOWED_UNUSED.keys())} allowed unused)")
