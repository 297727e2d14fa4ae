"""`gang: scheduler-plugins` against the real scheduler: scheduler-plugins' kube-scheduler with its
Coscheduling plugin (built from the Go module proxy by build-scheduler-plugins.sh, the pinned
release's own PodGroup CRD and scheduler configuration), running beside the default scheduler
as `scheduler-plugins-scheduler`, the name the operator gives the workers.

All or nothing: a gang one worker larger than the KWOK nodes' GPUs gets no pod bound (each is
seen and refused by the scheduler: FailedScheduling), so it holds no GPU while it waits; a gang
that fits next to it is placed whole.

Volcano's scheduler is not here: the Go module proxy refuses volcano.sh/volcano (403), so
`gang: volcano` is checked only for the PodGroup it creates (test_operator.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import binaries, procs
from tests.cluster.helpers import Cluster, http_ok, wait_for
from tests.cluster.launcher import free_port
from tests.cluster.test_operator import apply, pods, tj

pytestmark = pytest.mark.cluster

SCHEDULER = "scheduler-plugins-scheduler"
CRD = "podgroups.scheduling.x-k8s.io"


def module_dir() -> Path:
    version = binaries.versions()["SCHEDULER_PLUGINS_VERSION"]
    gomod = os.environ.get("KUBETRAIN_GOMODCACHE") or str(binaries.cache_dir() / "go" / "mod")
    return Path(gomod) / "sigs.k8s.io" / f"scheduler-plugins@{version}"


def scheduler_binary() -> Path | None:
    version = binaries.versions()["SCHEDULER_PLUGINS_VERSION"]
    path = Path(os.environ.get("SCHEDULER_PLUGINS_BIN")
                or binaries.cache_dir() / "bin" / f"scheduler-plugins-{version}" / "kube-scheduler")
    return path if path.is_file() and os.access(path, os.X_OK) and module_dir().is_dir() else None


def _replace_crd(cluster: Cluster, crd: dict[str, Any] | None) -> None:
    """Remove whatever PodGroup CRD another test left (test_operator's stand-in), then apply `crd`."""
    cluster.kubectl("delete", "crd", CRD, "--ignore-not-found", "--wait=true", timeout=120)
    if crd is not None:
        cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(crd))
        cluster.wait_established(CRD)


@pytest.fixture(scope="module")
def coscheduling(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    path = scheduler_binary()
    if path is None:
        pytest.skip("scheduler-plugins not built: run `bash tests/cluster/build-scheduler-plugins.sh`")
    manifests = module_dir() / "manifests" / "coscheduling"
    _replace_crd(cluster, yaml.safe_load((manifests / "crd.yaml").read_text()))
    run_dir = tmp_path_factory.mktemp("coscheduling")
    config = yaml.safe_load((manifests / "scheduler-config.yaml").read_text())
    config["clientConnection"]["kubeconfig"] = str(cluster.kubeconfig)
    config["profiles"][0]["schedulerName"] = SCHEDULER
    (run_dir / "config.yaml").write_text(json.dumps(config))
    health = free_port()
    proc = procs.Proc("scheduler-plugins", [
        str(path), f"--config={run_dir / 'config.yaml'}", "--bind-address=127.0.0.1",
        f"--secure-port={health}", f"--cert-dir={run_dir / 'certs'}", "--v=2",
    ], run_dir / "scheduler.log")
    proc.start()

    def healthy() -> bool:
        if not proc.alive():
            raise AssertionError(f"the scheduler exited:\n{procs.tail(proc.log, 60)}")
        return http_ok(f"https://127.0.0.1:{health}/healthz", insecure=True)

    wait_for(healthy, 60, "scheduler-plugins' kube-scheduler /healthz")
    try:
        yield proc
    finally:
        proc.stop()
        _replace_crd(cluster, None)


def scheduling_failures(cluster: Cluster, namespace: str) -> dict[str, str]:
    """pod name -> the message of its FailedScheduling Event from our scheduler."""
    items = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=FailedScheduling")
    return {e["involvedObject"]["name"]: e["message"] for e in items["items"]
            if SCHEDULER in ((e.get("source") or {}).get("component"), e.get("reportingComponent"))}


def test_a_gang_that_cannot_fit_binds_no_pod_and_one_that_fits_is_placed_whole(
        cluster: Cluster, namespace: str, coscheduling: procs.Proc, op: Any) -> None:
    too_big = cluster.node_count + 1
    apply(cluster, namespace, tj("toobig", workers={"replicas": too_big, "gpusPerWorker": 8}, runPolicy={
        "scheduling": {"gang": "scheduler-plugins", "schedulingTimeoutSeconds": 600}}))
    ps = wait_for(lambda: len(x := pods(cluster, namespace, "toobig")) == too_big and x, 30, "the gang's pods")
    assert {p["spec"]["schedulerName"] for p in ps} == {SCHEDULER}
    group = cluster.kubectl_json("get", CRD, "toobig", "-n", namespace)
    assert group["spec"]["minMember"] == too_big  # stored through the real CRD's schema
    # Every pod was seen and refused by the scheduler (the event that must come before any
    # binding could be judged absent), and none is bound: the gang holds no GPU.
    names = [p["metadata"]["name"] for p in ps]
    failures = wait_for(lambda: set(names) <= set(f := scheduling_failures(cluster, namespace)) and f, 60,
                        "FailedScheduling for every pod of the gang")
    assert not [p["spec"].get("nodeName") for p in pods(cluster, namespace, "toobig") if p["spec"].get("nodeName")]
    assert any("gpu" in m.lower() or "podgroup" in m.lower() or "permit" in m.lower() for m in failures.values()), \
        failures

    # A gang of every GPU there is fits beside it: the waiting gang reserved nothing.
    apply(cluster, namespace, tj("fits", workers={"replicas": cluster.node_count, "gpusPerWorker": 8}, runPolicy={
        "scheduling": {"gang": "scheduler-plugins", "schedulingTimeoutSeconds": 600}}))
    placed = wait_for(lambda: len(x := [p for p in pods(cluster, namespace, "fits") if p["spec"].get("nodeName")])
                      == cluster.node_count and x, 60, f"all {cluster.node_count} workers of `fits` bound")
    assert len({p["spec"]["nodeName"] for p in placed}) == cluster.node_count  # 8 GPUs each: all of them
    assert not [p for p in pods(cluster, namespace, "toobig") if p["spec"].get("nodeName")]
