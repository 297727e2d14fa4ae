"""A control plane for people:

    python -m tests.cluster up       # start in the background, print `export KUBECONFIG=...`
    python -m tests.cluster up --real-node   # ... with one real node (kubelet, containerd,
                                             # kube-proxy, CoreDNS) instead of KWOK's (tests/node)
    python -m tests.cluster down     # stop it
    python -m tests.cluster status

The state (pids, run dir, kubeconfig) is kept in $KUBETRAIN_CACHE/cluster/state.json."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tests.cluster import binaries, procs
from tests.cluster.launcher import ClusterInfo, ControlPlane, StartupError


def state_file() -> Path:
    return binaries.cache_dir() / "cluster" / "state.json"


def running(info: ClusterInfo) -> bool:
    return any(procs.pid_alive(pid, info.exes.get(name)) for name, pid in info.pids.items())


def up(args: argparse.Namespace) -> int:
    path = state_file()
    if path.exists():
        info = ClusterInfo.load(path)
        if running(info):
            print(f"# already running (run dir {info.run_dir})", file=sys.stderr)
            print(f"export KUBECONFIG={info.kubeconfig}")
            return 0
        path.unlink()
    run_dir = binaries.cache_dir() / "cluster" / "run"
    if args.real_node:  # before the run dir goes: a node left there is taken back by its records
        from tests.node import claim
        from tests.node import cluster as real

        try:
            claim.acquire(real.node_dir(run_dir), detach=True)
        except claim.NodeBusy as e:
            print(e, file=sys.stderr)
            return 1
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    try:
        if args.real_node:
            cp, _, _ = real.start(run_dir, detach=True)
            assert cp.info is not None
            info = cp.info
            info.real_node = True
        else:
            info = ControlPlane(run_dir, node_count=args.nodes, detach=True).start()
    except (binaries.MissingBinaries, StartupError, RuntimeError) as e:
        print(e, file=sys.stderr)
        return 1
    info.save(path)
    print(f"# control plane up in {time.monotonic() - started:.1f}s, logs in {run_dir}/logs; "
          "stop it with: python -m tests.cluster down", file=sys.stderr)
    if info.real_node:
        print(f"# the node's containerd: CONTAINERD_ADDRESS={run_dir}/node/containerd.sock "
              "bash images/build.sh --import-containerd   # the product's images onto the node", file=sys.stderr)
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


def down(_: argparse.Namespace) -> int:
    path = state_file()
    if not path.exists():
        from tests.node import claim

        if (held := claim.read()) is not None and held.detached:  # a node whose record is gone
            claim.reclaim(held)
        print("no cluster recorded", file=sys.stderr)
        return 0
    info = ClusterInfo.load(path)
    if info.real_node:  # the node first, while the API server still answers
        from tests.node import cluster as real

        real.stop_detached(info)
    for name in reversed(list(info.pids)):
        pid = info.pids[name]
        if procs.pid_alive(pid, info.exes.get(name)):
            procs.Proc(name, [info.exes[name]], Path(info.run_dir) / "logs" / f"{name}.log", pid=pid).stop()
    shutil.rmtree(info.run_dir, ignore_errors=True)
    path.unlink()
    print("control plane stopped", file=sys.stderr)
    return 0


def status(_: argparse.Namespace) -> int:
    path = state_file()
    if not path.exists():
        print("down")
        return 1
    info = ClusterInfo.load(path)
    for name, pid in info.pids.items():
        print(f"{name:25} pid {pid:7} {'running' if procs.pid_alive(pid, info.exes.get(name)) else 'DEAD'}")
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0 if running(info) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a control plane in the background")
    p_up.add_argument("--nodes", type=int, default=4, help="number of KWOK GPU nodes (default 4)")
    p_up.add_argument("--real-node", action="store_true",
                      help="one real node (kubelet + containerd + kube-proxy + CoreDNS) instead of KWOK's; "
                           "needs root, `bash tests/cluster/build.sh` and `bash tests/node/build-node-images.sh`")
    p_up.set_defaults(fn=up)
    sub.add_parser("down", help="stop it").set_defaults(fn=down)
    sub.add_parser("status", help="show its processes").set_defaults(fn=status)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
