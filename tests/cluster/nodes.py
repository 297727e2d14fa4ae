"""The KWOK fake GPU nodes: 8 nvidia.com/gpu, 64 CPUs and 512Gi each, pod CIDR inside 127.0.0.0/8."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
# KWOK manages the nodes that carry both. The label is what helpers.lose_node removes: label
# selectors are evaluated by the API server, so KWOK sees the node leave (annotations it filters
# itself, and a node whose annotation changes stays managed).
MANAGED_LABEL = "kwok.kubetrain.dev/managed"
GPU = "nvidia.com/gpu"
GPUS_PER_NODE = 8
CAPACITY = {"cpu": "64", "memory": "512Gi", GPU: str(GPUS_PER_NODE), "pods": "110", "ephemeral-storage": "1Ti"}

Kubectl = Callable[..., str]


def name(i: int) -> str:
    return f"kwok-node-{i}"


def pod_cidr(i: int) -> str:
    return f"127.1.{i + 1}.0/24"


def manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name(i),
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                MANAGED_LABEL: "true",
                "kubernetes.io/hostname": name(i),
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
            },
        },
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
        "status": {"capacity": dict(CAPACITY), "allocatable": dict(CAPACITY)},
    }


def create(kubectl: Kubectl, count: int) -> None:
    items = [manifest(i) for i in range(count)]
    if items:
        kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def ready_names(kubectl: Kubectl) -> set[str]:
    out = json.loads(kubectl("get", "nodes", "-o", "json"))
    ready = set()
    for node in out["items"]:
        for cond in node.get("status", {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready.add(node["metadata"]["name"])
    return ready


def all_ready(kubectl: Kubectl, count: int) -> bool:
    return {name(i) for i in range(count)} <= ready_names(kubectl)
