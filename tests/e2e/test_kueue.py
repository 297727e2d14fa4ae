"""Preempted by the real Kueue, resumed from the checkpoint the workers wrote when they stopped.

Kueue's manager (tests/cluster/kueue.py) queues two TrainingJobs in one ClusterQueue of 2 CPUs;
the workers are real trainer processes (podrunner), each requesting 1 CPU. A higher priority job
arriving evicts the running one: its workers get SIGTERM, commit a checkpoint at the step they
reached and exit 75; the quota goes back; the preemptor trains to the end; the victim is admitted
again and resumes from that checkpoint, not from an older one, losing no step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kubetrain.controller.kueue import QUEUE_LABEL
from tests.cluster import kueue
from tests.cluster.helpers import Cluster, wait_for
from tests.e2e.harness import (
    Operator,
    apply,
    committed_step,
    metrics_steps,
    restarted_at,
    status,
    tiny_job,
    wait_phase,
)
from tests.e2e.podrunner import PodRunner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

KUEUE_PRIORITIES = {"e2e-low": 100, "e2e-high": 1000}  # for the kueue_manager fixture (conftest)
KUEUE_FLAVORS = [{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "e2e-cpu"}}]


@pytest.fixture
def cpu_queue(cluster: Cluster, namespace: str, kueue_manager: kueue.KueueManager) -> Iterator[str]:
    """A ClusterQueue of 2 CPUs for this namespace that preempts lower priorities, and team-a."""
    cq = f"cq-{namespace}"[:63]
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cq},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "preemption": {"withinClusterQueue": "LowerPriority"},
                 "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
                     {"name": "e2e-cpu", "resources": [{"name": "cpu", "nominalQuota": "2"}]}]}]}}))
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": "team-a", "namespace": namespace}, "spec": {"clusterQueue": cq}}))
    try:
        yield cq
    finally:
        cluster.kubectl("delete", "tj", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)


def queued_job(name: str, priority: str, **kw: Any) -> dict[str, Any]:
    obj = tiny_job(name, **kw)
    obj["metadata"]["labels"] = {QUEUE_LABEL: "team-a"}
    obj["spec"]["workers"].update({"priorityClassName": priority, "resources": {"requests": {"cpu": "1"}}})
    return obj


def exit_codes(runner: PodRunner, names: list[str]) -> list[int | None]:
    return [None if (p := runner.process(n)) is None else p.exit_code for n in names]


def test_preempted_job_checkpoints_and_resumes_where_it_stopped(
        cluster: Cluster, namespace: str, claim: str, podrunner: PodRunner, cpu_queue: str,
        operator: Operator) -> None:
    interval, total = 10, 40
    apply(cluster, namespace, queued_job("low", "e2e-low", max_steps=total, interval=interval, step_sleep=0.25))
    low_dir = podrunner.claim_dir(claim) / "low"
    victims = ["low-worker-0-0-0", "low-worker-1-0-0"]
    for name in victims:
        podrunner.wait_started(name, timeout=120)
    # a committed checkpoint and a few steps beyond it, which the stop checkpoint must keep
    wait_for(lambda: (committed_step(low_dir) or 0) >= interval and max(metrics_steps(low_dir) or [0]) >= interval + 3,
             180, "a committed checkpoint and 3 more steps")

    apply(cluster, namespace, queued_job("high", "e2e-high", max_steps=6, interval=3))
    wait_for(lambda: all(code is not None for code in exit_codes(podrunner, victims)), 90,
             "the victim's trainers to exit")
    assert exit_codes(podrunner, victims) == [75, 75], exit_codes(podrunner, victims)
    stopped_at = max(metrics_steps(low_dir))
    stop_checkpoint = committed_step(low_dir)
    assert stop_checkpoint is not None and stop_checkpoint > interval, (stop_checkpoint, stopped_at)
    assert stop_checkpoint == stopped_at, "the stop checkpoint is the step the workers reached"
    s = status(cluster, namespace, "low")
    assert s.get("phase") == "Suspended", s

    wait_phase(cluster, namespace, "high", "Succeeded", 240)
    s = wait_phase(cluster, namespace, "low", "Succeeded", 300)
    assert s["restarts"]["failure"] == 0, s["restarts"]
    # Two runs of the victim's trainers, yet every step logged once: the second run started at
    # the step after the stop checkpoint (one from the interval, 10, would log 11.. again).
    steps = metrics_steps(low_dir)
    assert not restarted_at(steps) and steps == list(range(1, total + 1)), steps
    assert all(len(podrunner.incarnations(name)) == 2 for name in victims), podrunner.report()
    events = {e["reason"] for e in cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=low")["items"]}
    assert {"Preempted", "Admitted"} <= events, events
    assert committed_step(podrunner.claim_dir(claim) / "high") == 6
