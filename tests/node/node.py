"""One real node joined to a test control plane: containerd (+ runc, the CNI bridge), a kubelet
and kube-proxy, all inside the node's network namespace (network.py) and one private mount
namespace, so the node's mounts, routes and iptables rules vanish with it.

    node = RealNode(run_dir, server, certs)
    node.start()      # returns when the Node is Ready
    ...
    teardown(run_dir) # also from another process: the node stopped, its host changes undone

What the kubelet changes outside its namespaces is undone by teardown(): its cgroup tree
(CGROUP_ROOT), the containers and shims, its log links. The kernel settings it writes are
recorded before it starts and restored by the node's claim (claim.py), which outlives the run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster import binaries, pki, procs
from tests.cluster.launcher import write_kubeconfig
from tests.node import config, network
from tests.node.images import NodeImages, coredns_image

# what the kubelet sets when protectKernelDefaults is false (and a container may ask for)
SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
START_TIMEOUT = float(os.environ.get("KUBETRAIN_NODE_START_TIMEOUT", "120"))


class NodeError(RuntimeError):
    pass


def images_dir() -> Path:
    return binaries.cache_dir() / "node" / "containerd"


def node_binaries() -> dict[str, Path]:
    found = {name: binaries.find(name) for name in ("kubelet", "kube-proxy")}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        raise binaries.MissingBinaries(f"{', '.join(absent)} not found; run `bash tests/cluster/build.sh` first")
    return {name: path for name, path in found.items() if path is not None}


class RealNode:
    def __init__(self, run_dir: Path, server: str, certs: pki.Pki, detach: bool = False) -> None:
        self.detach = detach
        self.paths = config.NodePaths(run=run_dir, images=images_dir())
        self.server, self.certs = server, certs
        self.bins = node_binaries()
        self.procs: list[procs.Proc] = []
        self.images = NodeImages(self.paths.socket, self.paths.images / "kubetrain-imports.json")
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    def start(self, kubectl: Callable[..., str]) -> None:
        started = time.monotonic()
        p = self.paths
        for d in (p.run / "logs", p.state, p.kubelet_root, p.pod_logs, p.cni_conf_dir, p.pki, p.volumes, p.images):
            d.mkdir(parents=True, exist_ok=True)
        make_cgroup_root()
        if not config.CONTAINER_LOG_LINKS.exists():
            (p.run / "made-container-log-links").touch()
        self._write_files()
        # one process holds the node's mount namespace; every component joins it and the netns
        self._spawn("namespaces", ["nsenter", f"--net=/run/netns/{network.NETNS}", "unshare", "--mount",
                                   "--propagation", "slave", "sleep", "infinity"], join=False)
        self._wait("namespaces", self._namespaces_made)
        self._spawn("containerd", ["containerd", "--config", str(p.run / "containerd.toml")])
        self._wait("containerd", lambda: self._ctr_ok())
        self.images.ensure_tool_image("pause", config.PAUSE_IMAGE, "65535:65535", p.run)
        self.images.ensure_tool_image("coredns", coredns_image(), "65532:65532", p.run)
        self._spawn("kubelet", [str(self.bins["kubelet"]), f"--config={p.run / 'kubelet.yaml'}",
                                f"--kubeconfig={p.run / 'kubelet.kubeconfig'}", f"--root-dir={p.kubelet_root}",
                                f"--hostname-override={config.NODE_NAME}", f"--node-ip={network.NODE_IP}", "--v=1"])
        self._spawn("kube-proxy", [str(self.bins["kube-proxy"]), f"--config={p.run / 'kube-proxy.yaml'}", "--v=1"])
        self._wait("kubelet", lambda: node_ready(kubectl))
        self.timings["node ready (s)"] = time.monotonic() - started
        self._save_pids()

    def logs(self, name: str, lines: int = 60) -> str:
        return procs.tail(self.paths.run / "logs" / f"{name}.log", lines)

    # ----------------------------------------------------------------- helpers

    def _write_files(self) -> None:
        p, certs = self.paths, self.certs
        node_client = pki.issue(p.pki, "node-client", f"/O=system:nodes/CN=system:node:{config.NODE_NAME}",
                                certs.ca, "clientAuth")
        serving = pki.issue(p.pki, "kubelet-serving", f"/CN={config.NODE_NAME}", certs.ca, "serverAuth",
                            [f"IP:{network.NODE_IP}", f"DNS:{config.NODE_NAME}"])
        proxy = pki.issue(p.pki, "kube-proxy", "/CN=system:kube-proxy", certs.ca, "clientAuth")
        write_kubeconfig(p.run / "kubelet.kubeconfig", self.server, certs.ca.cert, node_client,
                         f"system:node:{config.NODE_NAME}")
        write_kubeconfig(p.run / "kube-proxy.kubeconfig", self.server, certs.ca.cert, proxy, "system:kube-proxy")
        (p.run / "containerd.toml").write_text(config.containerd_toml(p))
        (p.cni_conf_dir / "10-kubetrain.conflist").write_text(config.cni_conflist())
        resolv = p.run / "resolv.conf"
        resolv.write_text(f"nameserver {network.DNS_SERVICE_IP}\n")
        kubelet = config.kubelet_config(p, certs.ca.cert, serving.cert, serving.key, resolv)
        (p.run / "kubelet.yaml").write_text(json.dumps(kubelet, indent=1))
        (p.run / "kube-proxy.yaml").write_text(json.dumps(config.kube_proxy_config(p.run / "kube-proxy.kubeconfig")))

    def _spawn(self, name: str, argv: list[str], join: bool = True) -> None:
        if join:
            argv = ["nsenter", f"--target={self.procs[0].pid}", "--mount", "--net", *argv]
        proc = procs.Proc(name, argv, self.paths.run / "logs" / f"{name}.log")
        proc.start(detach=self.detach)
        self.procs.append(proc)
        self._save_pids()

    def _save_pids(self) -> None:
        (self.paths.run / "pids.json").write_text(json.dumps({p.name: p.pid for p in self.procs}))

    def _namespaces_made(self) -> bool:
        """The holder has left this process's mount namespace (nsenter then unshare ran)."""
        try:
            return os.readlink(f"/proc/{self.procs[0].pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        except OSError:
            return False

    def _ctr_ok(self) -> bool:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.images.ctr("version", timeout=5)
            return True
        return False

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise NodeError(f"{proc.name} exited during startup; last lines of {proc.log}:\n"
                                    f"{procs.tail(proc.log)}")
            if ready():
                return
            time.sleep(0.2)
        raise NodeError(f"{name} not ready after {START_TIMEOUT:.0f}s; last lines:\n{self.logs(name)}")


def node_ready(kubectl: Callable[..., str]) -> bool:
    with contextlib.suppress(RuntimeError):
        out = kubectl("get", "node", config.NODE_NAME, "-o",
                      "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        return out.strip() == "True"
    return False


# --------------------------------------------------------------------------- host state

def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        if read_sysctl(name) != value:
            Path("/proc/sys", *name.split(".")).write_text(value)


def make_cgroup_root() -> None:
    """The kubelet's cgroupRoot in every v1 hierarchy (it must exist); cpuset needs its CPUs and
    memory nodes copied from the parent before anything can join it."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink() and (hierarchy / "cgroup.procs").exists():
            top = hierarchy / config.CGROUP_ROOT.lstrip("/")
            top.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (top / name).exists() and not _read(top / name).strip():
                    (top / name).write_text(_read(hierarchy / name))


def cgroup_dirs() -> list[Path]:
    """Every directory of the kubelet's cgroup tree, deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / config.CGROUP_ROOT.lstrip("/")
        # os.walk ignores directories that vanish while it walks (the kubelet removes them)
        found.extend(Path(root) for root, _, _ in os.walk(top))
    return sorted(found, key=lambda d: len(d.parts), reverse=True)


def kill_cgroup_tree() -> None:
    for _ in range(50):
        pids = {int(pid) for d in cgroup_dirs()
                for pid in _read(d / "cgroup.procs").split() if pid.isdigit()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for d in cgroup_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()


def kill_shims(socket: Path) -> None:
    """containerd's shims leave its process group: find them by the socket they were given."""
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if b"containerd-shim" in (cmd := (entry / "cmdline").read_bytes()) and needle in cmd:
                    os.kill(int(entry.name), signal.SIGKILL)


def stop_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGTERM a component's process group, SIGKILL it after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not pgid or not procs.group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and procs.group_alive(pgid):
            time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def teardown(run_dir: Path) -> None:
    """Stop the node that ran in run_dir and undo what it changed on the host (idempotent). Every
    step runs even when an earlier one failed; the first error is raised at the end."""
    paths = config.NodePaths(run=run_dir, images=images_dir())
    try:
        pids: dict[str, int] = json.loads((run_dir / "pids.json").read_text())
    except (OSError, ValueError):
        pids = {}
    steps: list[Callable[[], None]] = [
        lambda: stop_group(pids.get("kube-proxy", 0)),
        lambda: stop_group(pids.get("kubelet", 0)),
        kill_cgroup_tree,  # the containers
        lambda: stop_group(pids.get("containerd", 0)),
        lambda: stop_group(pids.get("namespaces", 0)),
        lambda: kill_shims(paths.socket),
        kill_cgroup_tree,
        lambda: remove_log_links(paths.pod_logs),
        lambda: unmount_under(run_dir),
        lambda: shutil.rmtree(paths.state, ignore_errors=True),
        lambda: shutil.rmtree(paths.kubelet_root, ignore_errors=True),
    ]
    errors: list[BaseException] = []
    for step in steps:
        try:
            step()
        except Exception as e:  # keep undoing; the first error is raised below
            errors.append(e)
    if errors:
        raise NodeError(f"teardown of the node in {run_dir}: {errors[0]!r}") from errors[0]


def unmount_under(root: Path) -> None:
    """Whatever is still mounted under root in this mount namespace (normally nothing: the node's
    mounts live in its own namespace), deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = [line.split()[4] for line in _read(Path("/proc/self/mountinfo")).splitlines() if len(line.split()) > 4]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)


def remove_log_links(pod_logs: Path) -> None:
    """The kubelet's links in /var/log/containers into this node's logs, and the directory when
    the node made it (nothing else is in it)."""
    links = config.CONTAINER_LOG_LINKS
    if not links.is_dir():
        return
    for link in links.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(pod_logs):
                link.unlink()
    with contextlib.suppress(OSError):
        if (pod_logs.parent / "made-container-log-links").exists():
            links.rmdir()


def host_snapshot(run_dir: Path) -> dict[str, object]:
    """What a node could leave behind on the host: compared before start and after stop."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    logs = config.CONTAINER_LOG_LINKS
    return {
        "sysctls": {name: read_sysctl(name) for name in SYSCTLS},
        "netns": sorted(n for n in netns if n.startswith(network.NETNS)),
        "links": sorted(w.rstrip(":").split("@")[0] for line in links.splitlines()
                        for w in line.split()[1:2] if w.startswith("kt-")),
        "mounts": sorted(line.split()[4] for line in _read(Path("/proc/self/mountinfo")).splitlines()
                         if str(run_dir) in line or str(images_dir()) in line),
        "cgroups": [str(d) for d in cgroup_dirs()],
        "container log links": sorted(str(p) for p in logs.iterdir()) if logs.is_dir() else None,
        "processes": sorted(e.name for e in Path("/proc").iterdir() if e.name.isdigit()
                            and str(run_dir).encode() in _read_bytes(e / "cmdline")),
    }


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
