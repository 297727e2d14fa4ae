"""Fixtures of the real-node tier: one control plane with one real node (kubelet, containerd,
kube-proxy, CoreDNS; tests/node/cluster.py) for the tier's tests, the product's images imported
into the node, and the chart installed by the real Helm. Needs root; under CI=true a skip fails
the run, and .ci/run builds what the tier needs. A node a killed run left is taken back first
(claim.py); the host is compared before the node starts and after it stops: a difference fails
the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import binaries
from tests.cluster.helpers import Cluster, wait_for
from tests.node import images as node_images
from tests.node.node import RealNode, host_snapshot, node_binaries

REPO = Path(__file__).resolve().parents[2]
RELEASE, OPERATOR_NAMESPACE = "kubetrain", "kubetrain-system"
REPORT: list[str] = []
# what the node runs from the host's packages (Debian's)
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "nsenter", "unshare")
CNI_BRIDGE = "/usr/lib/cni/bridge"
_state: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("real node")
        for line in REPORT:
            terminalreporter.write_line(line)


def _prerequisites() -> str:
    from tests.node import claim

    if os.geteuid() != 0:
        return "the real-node tier needs root (network namespace, cgroups, containerd): run pytest as root"
    absent = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    absent += [] if Path(CNI_BRIDGE).exists() else [CNI_BRIDGE]
    if absent:
        return (f"the real-node tier needs {', '.join(absent)}: apt-get install containerd runc iptables "
                "util-linux containernetworking-plugins (.ci/run does)")
    try:
        node_binaries()
        node_images.tool("coredns")
        node_images.tool("pause")
    except (binaries.MissingBinaries, node_images.MissingNodeBinaries) as e:
        return f"the real-node tier: {e} (CI builds them in .ci/run)"
    if why := claim.busy():
        return f"the real-node tier: {why}"
    return ""


@pytest.fixture(scope="package")
def node_host() -> None:
    """This machine can run the real node now (root, host packages, the built binaries, no other
    run holding the node), else skip: outside CI only (conftest.py turns a skip under CI=true
    into a failure), with the reason and the command that mends it."""
    if why := _prerequisites():
        pytest.skip(why)


@pytest.fixture(scope="package")
def real_cluster(node_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Package-scoped: the node goes as soon as this tier's tests are done, not at the end of the
    whole run (a 2-core machine's kubelet, containerd and CoreDNS would idle through the rest)."""
    from tests.node import claim
    from tests.node import cluster as real

    run_dir = tmp_path_factory.mktemp("real-node")
    # a node a killed run left behind is taken back first, so the host is compared as it was
    claim.acquire(real.node_dir(run_dir))
    before = host_snapshot(run_dir)
    started = time.monotonic()
    cp, node, timings = real.start(run_dir)
    assert cp.info is not None
    _state["node"] = node
    try:
        for name in ("operator", "trainer"):
            seconds = node.images.ensure_product_image(name, f"ghcr.io/kubetrain/{name}:{product_version()}")
            timings[f"import {name} image (s)"] = seconds
        timings["ready for tests (s)"] = time.monotonic() - started
        REPORT.extend(f"{what}: {seconds:.1f}" for what, seconds in timings.items())
        yield Cluster(kubeconfig=Path(cp.info.kubeconfig), kubectl_bin=cp.info.kubectl, node_count=0)
    finally:
        _state.clear()
        real.stop(cp)
    after = host_snapshot(run_dir)
    assert after == before, f"the real node left the host changed:\nbefore {before}\nafter  {after}"


def product_version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="package")
def release(real_cluster: Cluster) -> Iterator[str]:
    """The chart, `helm install`ed into a namespace that enforces Pod Security "restricted";
    the operator (2 replicas, leader election) watching every namespace. Uninstalled by the test
    that checks uninstall, else after the tier."""
    real_cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    restrict(real_cluster, OPERATOR_NAMESPACE)
    real_cluster.helm("install", RELEASE, str(REPO / "charts" / "kubetrain"), "-n", OPERATOR_NAMESPACE,
                      "--set", "image.pullPolicy=Never", "--wait", "--timeout", "120s")
    _state["release"] = True
    yield RELEASE
    if _state.get("release"):
        real_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


def restrict(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


@pytest.fixture
def job_namespace(real_cluster: Cluster, release: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security "restricted" for one test's TrainingJobs."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", name)
    restrict(real_cluster, name)
    wait_for(lambda: real_cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                                          check=False).returncode == 0, 30, f"serviceaccount default in {name}")
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def claim(real_cluster: Cluster, job_namespace: str) -> str:
    """A PersistentVolumeClaim `ckpt` in the test's namespace, bound by the real PV controller to
    a local PersistentVolume on the node (a directory under the node's run dir)."""
    from tests.node import addons

    node: RealNode = _state["node"]
    path = node.paths.volumes / job_namespace
    path.mkdir(parents=True)
    path.chmod(0o777)  # the trainer runs as an arbitrary non-root user
    manifests = [addons.build_local_pv(f"ckpt-{job_namespace}", str(path)), addons.build_pvc("ckpt", job_namespace)]
    real_cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    return "ckpt"


def volume_dir(namespace: str) -> Path:
    node: RealNode = _state["node"]
    return node.paths.volumes / namespace


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test shows the kubelet's and the operator's logs."""
    outcome = yield
    report = outcome.get_result()
    node: RealNode | None = _state.get("node")
    if node is None or not report.failed or "real_cluster" not in getattr(item, "fixturenames", ()):
        return
    report.sections.append(("kubelet log (last lines)", node.logs("kubelet", 40)))
    cluster = item.funcargs.get("real_cluster") if hasattr(item, "funcargs") else None
    if isinstance(cluster, Cluster):
        logs = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=kubetrain-operator",
                               "--tail=60", "--prefix", check=False)
        report.sections.append(("operator logs (last lines)", logs.stdout + logs.stderr))

