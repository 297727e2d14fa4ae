"""The real-node tier's cluster: the test control plane bound where pods can reach it, one real
node (node.py), cluster DNS and local volumes.

    with real_node_cluster(run_dir) as (info, node):
        ...      # info.kubeconfig: the admin kubeconfig

`python -m tests.cluster up --real-node` starts the same detached (and `down` undoes it)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.cluster import procs
from tests.cluster.launcher import ClusterInfo, ControlPlane
from tests.node import addons, claim, network
from tests.node.images import coredns_image
from tests.node.node import NodeError, RealNode, node_binaries, teardown

DNS_TIMEOUT = 90.0
_exit_hooks: dict[int, Callable[[], None]] = {}


def control_plane(run_dir: Path, detach: bool = False) -> ControlPlane:
    return ControlPlane(run_dir, node_count=0, detach=detach, address=network.HOST_IP,
                        service_cidr=network.SERVICE_CIDR, service_ip=network.KUBERNETES_SERVICE_IP)


def node_dir(run_dir: Path) -> Path:
    return run_dir / "node"


def start(run_dir: Path, detach: bool = False) -> tuple[ControlPlane, RealNode, dict[str, float]]:
    """Network, control plane, node, add-ons; on failure everything started is undone."""
    node_binaries()  # fail before touching the host when the kubelet is not built
    claim.acquire(node_dir(run_dir), detach)  # and when another run holds the node
    timings: dict[str, float] = {}
    started = time.monotonic()
    net = network.NodeNetwork()
    net.up()
    cp = control_plane(run_dir, detach)
    if not detach:  # undone at interpreter exit and on SIGTERM/SIGHUP, like the control plane
        _exit_hooks[id(cp)] = hook = lambda: stop(cp)
        procs.on_exit(hook)
    try:
        info = cp.start()
        timings["control plane (s)"] = time.monotonic() - started
        assert cp.certs is not None
        node = RealNode(node_dir(run_dir), info.server, cp.certs, detach)
        node.start(cp.kubectl)
        timings.update(node.timings)
        apply(cp, [addons.build_storage_class(), *addons.build_coredns(coredns_image())])
        wait_dns(cp)
        timings["cluster ready (s)"] = time.monotonic() - started
    except BaseException:
        stop(cp, keep_logs=True)
        raise
    return cp, node, timings


def stop(cp: ControlPlane, keep_logs: bool = False) -> None:
    if hook := _exit_hooks.pop(id(cp), None):
        procs.forget(hook)
    teardown(node_dir(cp.run_dir))
    cp.stop(keep_logs=keep_logs)
    network.NodeNetwork().down()
    claim.release(node_dir(cp.run_dir))


def stop_detached(info: ClusterInfo) -> None:
    """`down` for a cluster another process started."""
    teardown(node_dir(Path(info.run_dir)))
    network.NodeNetwork().down()
    claim.release(node_dir(Path(info.run_dir)))


def apply(cp: ControlPlane, manifests: list[dict[str, object]]) -> None:
    cp.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                         "items": manifests}))


def wait_dns(cp: ControlPlane) -> None:
    deadline = time.monotonic() + DNS_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError):
            ready = cp.kubectl("get", "deployment", "coredns", "-n", addons.DNS_NAMESPACE,
                               "-o", "jsonpath={.status.readyReplicas}")
            if ready.strip() == "1":
                return
        time.sleep(0.3)
    pods = cp.kubectl("describe", "pods", "-n", addons.DNS_NAMESPACE, "-l", "k8s-app=kube-dns")
    raise NodeError(f"CoreDNS not ready after {DNS_TIMEOUT:.0f}s:\n{pods[-4000:]}")


@contextlib.contextmanager
def real_node_cluster(run_dir: Path) -> Iterator[tuple[ClusterInfo, RealNode, dict[str, float]]]:
    cp, node, timings = start(run_dir)
    try:
        assert cp.info is not None
        yield cp.info, node, timings
    finally:
        stop(cp)
