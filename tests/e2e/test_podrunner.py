"""The podrunner's own logic that needs no cluster: simulated DNS, `$(VAR)` expansion, exit codes,
finding a pod's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e.podrunner import POD_MARKER, exit_code, expand, field_ref, marked_pids, resolve, split_endpoint

pytestmark = pytest.mark.e2e
NS = "ns"


def pod(name: str, ip: str | None = "127.3.1.1", *, hostname: str = "", subdomain: str = "", ready: bool = True,
        deleting: bool = False, phase: str = "Running", created: str = "2026-01-01T00:00:00Z",
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": created,
                            "labels": labels if labels is not None else {"job": "j"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "spec": {"hostname": hostname, "subdomain": subdomain}, "status": status}


def service(name: str, headless: bool = True, not_ready: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": "None" if headless else "127.2.0.9", "selector": {"job": "j"},
                     "publishNotReadyAddresses": not_ready}}


def names(found: dict[str, Any] | None) -> str | None:
    return found["metadata"]["name"] if found else None


def test_pod_records_of_a_headless_service() -> None:
    w0 = pod("w0", hostname="job-worker-0", subdomain="job")
    w1 = pod("w1", "127.3.2.1", hostname="job-worker-1", subdomain="job")
    pods, svcs = [w0, w1], [service("job")]
    for name in ("job-worker-0.job", "job-worker-0.job.ns", "job-worker-0.job.ns.svc",
                 "job-worker-0.job.ns.svc.cluster.local", "JOB-WORKER-0.job.ns.svc.cluster.local."):
        assert names(resolve(name, NS, pods, svcs)) == "w0", name
    assert names(resolve("job-worker-1.job", NS, pods, svcs)) == "w1"
    assert resolve("job-worker-2.job", NS, pods, svcs) is None
    assert resolve("job-worker-0.job.other.svc", NS, pods, svcs) is None  # another namespace
    assert resolve("job-worker-0.job", NS, pods, []) is None  # no Service, no records
    assert resolve("job-worker-0.job", NS, pods, [service("job", headless=False)]) is None
    # the Service's selector must match
    assert resolve("job-worker-0.job", NS, [pod("x", hostname="job-worker-0", subdomain="job", labels={})],
                   svcs) is None


def test_only_published_pods_answer() -> None:
    svcs = [service("job")]
    for unpublished in (pod("w0", hostname="h", subdomain="job", ready=False),
                        pod("w0", hostname="h", subdomain="job", deleting=True),
                        pod("w0", hostname="h", subdomain="job", phase="Failed"),
                        pod("w0", None, hostname="h", subdomain="job")):
        assert resolve("h.job", NS, [unpublished], svcs) is None
    # publishNotReadyAddresses: not-ready and terminating pods answer too, a live one first
    old = pod("old", "127.3.1.1", hostname="h", subdomain="job", ready=False, deleting=True)
    new = pod("new", "127.3.2.1", hostname="h", subdomain="job", ready=False, created="2026-01-01T00:05:00Z")
    assert names(resolve("h.job", NS, [old, new], [service("job", not_ready=True)])) == "new"
    assert names(resolve("h.job", NS, [old], [service("job", not_ready=True)])) == "old"
    # with it off, the replacement answers as soon as it is Ready, never the old one
    assert names(resolve("h.job", NS, [old, pod("new", hostname="h", subdomain="job")], svcs)) == "new"


def test_service_names() -> None:
    pods = [pod("b", "127.3.2.1"), pod("a", "127.3.1.1"), pod("c", ready=False)]
    for name in ("job", "job.ns", "job.ns.svc", "job.ns.svc.cluster.local"):
        assert names(resolve(name, NS, pods, [service("job")])) == "a", name
    assert names(resolve("job", NS, pods, [service("job", headless=False)])) == "a"
    assert resolve("nothing", NS, pods, [service("job")]) is None


def test_expand_and_fields() -> None:
    env = {"A": "1", "B": "x"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-x-$(C)-$(A)"
    p = pod("w0", hostname="h", subdomain="s")
    assert field_ref(p, "metadata.name") == "w0" and field_ref(p, "status.podIP") == "127.3.1.1"
    assert field_ref(p, "metadata.namespace") == NS and field_ref(p, "metadata.labels['job']") == "j"
    with pytest.raises(ValueError):
        field_ref(p, "status.nothing")
    assert split_endpoint("job-worker-0.job:29400") == ("job-worker-0.job", 29400)
    assert split_endpoint("[::1]:5") == ("::1", 5) and split_endpoint("host") == ("host", None)
    assert exit_code(0) == 0 and exit_code(65) == 65 and exit_code(-9) == 137 and exit_code(-15) == 143


def test_a_pods_processes_are_found_by_their_marker() -> None:
    marker = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, POD_MARKER: marker}
    # a grandchild in its own session, as torch starts its workers
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], "
            "start_new_session=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(marked_pids(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = marked_pids(marker)
        assert proc.pid in found and len(found) == 2, found
    finally:
        for pid in marked_pids(marker):
            os.kill(pid, 9)
        proc.wait(10)
    deadline = time.monotonic() + 10
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_pids(marker) == []
