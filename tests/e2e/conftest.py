"""Fixtures of the e2e tier: a real control plane (as in tests/cluster) whose KWOK pods run as real
trainer processes (podrunner.py), the operator under its own ServiceAccount, a checkpoint claim.

The control plane is the cluster tier's, started with its own pod CIDRs (127.X.N.0/24, X picked
per session in 16-250, instead of 127.1.N.0/24): pod IPs here are real listening addresses, and
neither a cluster-tier run on the same machine (its fake /progress servers bind 127.1.N.x) nor a
second e2e session may answer for a pod of this one. KUBECONFIG_KUBETRAIN_TEST reuses a running
control plane as it is.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import conftest as cluster_tier
from tests.cluster import nodes
from tests.cluster.helpers import Cluster
from tests.e2e.harness import Operator, describe, make_claim, operator_kubeconfig
from tests.e2e.podrunner import PodRunner

# The cluster tier's fixtures, as they are: a fresh namespace per test (the nodes restored first),
# the TrainingJob CRD installed once, Kueue's manager per module that asks for it.
namespace = cluster_tier.namespace
trainingjob_crd = cluster_tier.trainingjob_crd
kueue_manager = cluster_tier.kueue_manager
_timings: dict[str, float] = {}


POD_NET = random.Random(os.getpid() ^ time.time_ns()).randint(16, 250)  # 127.POD_NET.N.0/24


def e2e_pod_cidr(i: int) -> str:
    return f"127.{POD_NET}.{i + 1}.0/24"


@contextlib.contextmanager
def e2e_pod_cidrs() -> Iterator[None]:
    """Nodes created meanwhile (tests.cluster.nodes.manifest) get the e2e tier's pod CIDRs."""
    original = nodes.pod_cidr
    nodes.pod_cidr = e2e_pod_cidr
    try:
        yield
    finally:
        nodes.pod_cidr = original


class E2ECluster(Cluster):
    def ensure_nodes(self, timeout: float = 30.0) -> None:
        with e2e_pod_cidrs():
            super().ensure_nodes(timeout)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in _timings.items():
        terminalreporter.write_line(f"kubetrain e2e: {what}: {seconds:.1f}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with cluster_tier.control_plane(_timings, E2ECluster, e2e_pod_cidrs) as running:
        yield running


@pytest.fixture(scope="session")
def sa_kubeconfig(cluster: Cluster, trainingjob_crd: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return operator_kubeconfig(cluster, tmp_path_factory.mktemp("operator") / "kubeconfig")


@pytest.fixture
def claim(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A bound ReadWriteMany claim `ckpt` for checkpoints; the podrunner gives it one directory."""
    pv = make_claim(cluster, namespace, "ckpt")
    yield "ckpt"
    cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


@pytest.fixture
def podrunner(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[PodRunner]:
    runner = PodRunner(cluster, namespace, tmp_path / "pods").start()
    yield runner
    runner.stop()
    assert not runner.errors, f"the podrunner failed: {runner.errors}\n{runner.report()}"


@pytest.fixture
def operator(sa_kubeconfig: Path, namespace: str, podrunner: PodRunner, tmp_path: Path) -> Iterator[Operator]:
    """The operator for `namespace`; set up after the podrunner, so it stops first and does not
    react to the teardown's kills."""
    op = Operator(sa_kubeconfig, namespace, tmp_path).start()
    yield op
    code = op.stop()
    assert code == 0, f"operator exit code {code} on SIGTERM\n{op.logs()}"
    assert "Traceback" not in op.logs(10_000), op.logs(10_000)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed e2e test shows the cluster's state, every pod process's log and the operator's log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when not in ("setup", "call") or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    cluster, ns = funcargs.get("cluster"), funcargs.get("namespace")
    if isinstance(cluster, Cluster) and isinstance(ns, str):
        with contextlib.suppress(Exception):
            report.sections.append(("e2e: cluster state", describe(cluster, ns)))
    runner = funcargs.get("podrunner")
    if isinstance(runner, PodRunner):
        report.sections.append(("e2e: pod processes", runner.report()))
    op = funcargs.get("operator")
    if isinstance(op, Operator):
        report.sections.append(("e2e: operator log", op.logs()))
