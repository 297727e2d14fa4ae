"""Fixtures for the cluster tier: one control plane per session, a fresh namespace per test.

Set KUBECONFIG_KUBETRAIN_TEST to the kubeconfig of a running cluster (`python -m tests.cluster up`)
to reuse it instead of starting one."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import binaries
from tests.cluster.helpers import Cluster, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crd.yaml"
_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in _timings.items():
        terminalreporter.write_line(f"kubetrain cluster: {what}: {seconds:.1f}")


@contextlib.contextmanager
def control_plane(timings: dict[str, float], make: type[Cluster] = Cluster,
                  around: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                  ) -> Iterator[Cluster]:
    """A running control plane for a session: the one KUBECONFIG_KUBETRAIN_TEST names, else a
    fresh one (started inside `around`), stopped afterwards. Skips when binaries are missing."""
    existing = os.environ.get("KUBECONFIG_KUBETRAIN_TEST")
    if existing:
        try:
            yield Cluster.connect(Path(existing))
        except binaries.MissingBinaries as e:
            pytest.skip(str(e))
        return

    from tests.cluster.launcher import ControlPlane

    try:
        cp = ControlPlane()
    except binaries.MissingBinaries as e:
        pytest.skip(str(e))
    started = time.monotonic()
    with around():
        info = cp.start()
    timings["control plane start (s)"] = time.monotonic() - started
    try:
        yield make(kubeconfig=Path(info.kubeconfig), kubectl_bin=info.kubectl, node_count=cp.node_count)
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with control_plane(_timings) as running:
        yield running


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) for one test; deleted afterwards."""
    cluster.ensure_nodes()
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # the ServiceAccount admission plugin refuses pods until the token controller made `default`
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30, f"serviceaccount default in {name}",
    )
    yield name
    # pods on a lost node never finish terminating; force them so the namespace can go
    cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def trainingjob_crd(cluster: Cluster) -> str:
    """Install manifests/crd.yaml (the generated TrainingJob CRD) and wait until it is served."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established("trainingjobs.kubetrain.dev")
    wait_for(lambda: cluster.kubectl("get", "tj", "-A", check=False).returncode == 0, 30, "tj to be served")
    return "trainingjobs.kubetrain.dev"


@pytest.fixture
def op(cluster: Cluster, trainingjob_crd: str, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """The operator for `namespace` as a subprocess under its own ServiceAccount
    (manifests/rbac.yaml): a test_operator.Operator, started; stopped (SIGTERM) afterwards."""
    from tests.cluster.test_operator import Operator
    from tests.e2e.harness import operator_kubeconfig

    running = Operator(operator_kubeconfig(cluster, tmp_path / "kubeconfig"), namespace, tmp_path)
    running.start()
    yield running
    code = running.stop()
    assert code == 0 and "Traceback" not in running.logs(), f"operator exit {code}:\n{running.logs()}"


@pytest.fixture(scope="module")
def kueue_manager(cluster: Cluster, trainingjob_crd: str, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[Any]:
    """Kueue's real manager installed and running for a module (tests/cluster/kueue.py), with the
    module's KUEUE_FLAVORS (ResourceFlavors) and KUEUE_PRIORITIES (PriorityClass name -> value).
    Skipped with the command to run when Kueue is not built (under CI=true a skip fails the run,
    and .ci/run builds it)."""
    from tests.cluster import kueue

    flavors, priorities = getattr(request.module, "KUEUE_FLAVORS", []), getattr(request.module, "KUEUE_PRIORITIES", {})
    try:
        kueue.binary()
    except kueue.MissingKueue as e:
        pytest.skip(str(e))
    with kueue.running(cluster, tmp_path_factory.mktemp("kueue"), flavors, priorities) as manager:
        yield manager
