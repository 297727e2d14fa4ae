"""The control plane is real: versions, scheduling onto KWOK GPU nodes, garbage collection,
namespace deletion, RBAC, and the test helpers that drive pods and nodes."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

import pytest

from tests.cluster import nodes
from tests.cluster.helpers import Cluster, wait_for

pytestmark = pytest.mark.cluster


def pod(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {nodes.GPU: str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "kubetrain/trainer:test", "resources": resources}],
            **spec,
        },
    }


def apply(cluster: Cluster, namespace: str, *objs: dict[str, Any]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    return cluster.kubectl_json("get", "-n", namespace, *what)


def kwok_caught_up(cluster: Cluster, namespace: str) -> None:
    """A barrier for "nothing happens" checks instead of a sleep: a pod created now, run by KWOK
    and deleted. KWOK reads pods from one watch, in resourceVersion order, so once it has run this
    pod it has seen every earlier change (and acted on it, if it was going to)."""
    name = f"barrier-{time.monotonic_ns()}"
    apply(cluster, namespace, pod(name, gpus=0))
    wait_for(lambda: get(cluster, namespace, f"pod/{name}")["status"].get("phase") == "Running", 30,
             "KWOK to run the barrier pod")
    cluster.kubectl("delete", f"pod/{name}", "-n", namespace, "--wait=false")


def test_version_is_pinned(cluster: Cluster) -> None:
    want = cluster.versions["K8S_VERSION"]
    server = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert server["gitVersion"] == want
    assert (server["major"], server["minor"]) == ("1", want.split(".")[1])
    client = json.loads(cluster.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == want


def test_gpu_nodes(cluster: Cluster) -> None:
    items = cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(items) == cluster.node_count
    for node in items:
        assert node["status"]["allocatable"][nodes.GPU] == str(nodes.GPUS_PER_NODE)
        cidr = ipaddress.IPv4Network(node["spec"]["podCIDR"])
        assert cidr.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))


def test_deployment_pods_run_on_kwok_nodes(cluster: Cluster, namespace: str) -> None:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": pod("web")["spec"] | {"restartPolicy": "Always"}}
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
    }
    apply(cluster, namespace, deploy)
    wait_for(
        lambda: get(cluster, namespace, "deployment/web").get("status", {}).get("availableReplicas") == 3,
        60, "deployment web available",
    )
    node_cidrs = {
        n["metadata"]["name"]: ipaddress.ip_network(n["spec"]["podCIDR"])
        for n in cluster.kubectl_json("get", "nodes")["items"]
    }
    pods = get(cluster, namespace, "pods", "-l", "app=web")["items"]
    assert len(pods) == 3
    for p in pods:
        assert p["status"]["phase"] == "Running"
        node = p["spec"]["nodeName"]
        assert node.startswith("kwok-node-")
        ip = ipaddress.ip_address(p["status"]["podIP"])
        assert ip in node_cidrs[node], (ip, node)  # loopback: nothing can dial a real address
        assert ip.is_loopback


def test_scheduler_counts_gpus(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod("too-big", gpus=nodes.GPUS_PER_NODE + 1))

    def unschedulable() -> bool:
        conds = get(cluster, namespace, "pod/too-big").get("status", {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds)

    wait_for(unschedulable, 30, "too-big Unschedulable")
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=too-big")["items"]
    assert any(e["reason"] == "FailedScheduling" and "nvidia.com/gpu" in e["message"] for e in events)


def test_stay_pending_annotation(cluster: Cluster, namespace: str) -> None:
    held = pod("held")
    held["metadata"]["annotations"] = {"kwok.kubetrain.dev/stay-pending": "true"}
    apply(cluster, namespace, held, pod("free"))
    wait_for(lambda: get(cluster, namespace, "pod/free")["status"].get("phase") == "Running", 30, "free Running")
    p = get(cluster, namespace, "pod/held")
    assert p["spec"].get("nodeName", "").startswith("kwok-node-")
    assert p["status"]["phase"] == "Pending"


def test_deleting_owner_collects_children(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    uid = get(cluster, namespace, "configmap/owner")["metadata"]["uid"]
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
    child = pod("child", gpus=0)
    child["metadata"]["ownerReferences"] = [ref]
    apply(cluster, namespace,
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [ref]}},
          child)
    cluster.kubectl("delete", "configmap/owner", "-n", namespace)

    def gone() -> bool:
        left = cluster.kubectl("get", "configmap/child", "pod/child", "-n", namespace,
                               "--ignore-not-found", "-o", "name").stdout
        return left.strip() == ""

    wait_for(gone, 60, "garbage collector to delete the children")


def test_namespace_deletion_completes(cluster: Cluster) -> None:
    name = f"doomed-{int(time.time() * 1000) % 100000}"
    cluster.kubectl("create", "namespace", name)
    wait_for(lambda: cluster.kubectl("get", "sa/default", "-n", name, check=False).returncode == 0,
             30, "default serviceaccount")
    apply(cluster, name, pod("p", gpus=0), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    wait_for(lambda: get(cluster, name, "pod/p")["status"].get("phase") == "Running", 30, "pod Running")
    cluster.kubectl("delete", "namespace", name, "--wait=false")
    wait_for(lambda: cluster.kubectl("get", "namespace", name, check=False).returncode != 0,
             60, f"namespace {name} to be deleted")


def test_rbac_is_enforced(cluster: Cluster, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:default"
    out = cluster.kubectl("auth", "can-i", "create", "pods", "-n", namespace, "--as", sa, check=False)
    assert out.stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "create", "pods", "-n", namespace).stdout.strip() == "yes"


@pytest.mark.parametrize(("code", "phase"), [(0, "Succeeded"), (65, "Failed")])
def test_terminate_pod(cluster: Cluster, namespace: str, code: int, phase: str) -> None:
    apply(cluster, namespace, pod("worker"))
    finished = cluster.terminate_pod(namespace, "worker", code, message='{"reason": "ModelError", "step": 7}')
    kwok_caught_up(cluster, namespace)
    after = get(cluster, namespace, "pod/worker")
    # KWOK did not take it back: nobody wrote the pod after the harness finished it
    assert after["metadata"]["resourceVersion"] == finished["metadata"]["resourceVersion"]
    status = after["status"]
    assert status["phase"] == phase
    term = status["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == code
    assert term["message"] == '{"reason": "ModelError", "step": 7}'
    assert term["reason"] == ("Completed" if code == 0 else "Error")


def test_lose_node(cluster: Cluster, namespace: str) -> None:
    victim = nodes.name(cluster.node_count - 1)
    apply(cluster, namespace, pod("stranded", nodeName=victim))
    wait_for(lambda: get(cluster, namespace, "pod/stranded")["status"].get("phase") == "Running", 30, "Running")
    cluster.lose_node(victim)  # returns once the node lifecycle controller noticed

    def tainted() -> bool:
        node = cluster.kubectl_json("get", "node", victim)
        return "node.kubernetes.io/unreachable" in {t["key"] for t in node["spec"].get("taints") or []}

    wait_for(tainted, 30, "the lost node tainted unreachable")

    def pod_not_ready() -> bool:
        conds = get(cluster, namespace, "pod/stranded")["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "False" for c in conds)

    wait_for(pod_not_ready, 30, "pod on the lost node marked not Ready")
    # nothing runs that node any more: a deleted pod stays Terminating
    cluster.kubectl("delete", "pod/stranded", "-n", namespace, "--wait=false")
    kwok_caught_up(cluster, namespace)  # on a node KWOK still manages
    assert get(cluster, namespace, "pod/stranded")["metadata"].get("deletionTimestamp")
    cluster.delete_node(victim)
    cluster.ensure_nodes()
    assert victim in nodes.ready_names(lambda *a, stdin=None: cluster.kubectl(*a, stdin=stdin).stdout)
