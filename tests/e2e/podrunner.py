"""A mini-kubelet for the e2e tier: the worker pods that KWOK reports Running become real local
processes, and their ends become the pods' final states.

What a kubelet and container runtime would do, and how it is simulated here (README.md):

- Start: a pod of a TrainingJob (label `kubetrain.dev/job-name`) that KWOK made Running, with an IP,
  runs its container's command/args as a local process (`python` is this interpreter) in its own
  session, with the container's env (`value` with `$(VAR)` expansion, `valueFrom` fieldRef,
  configMapKeyRef, secretKeyRef, `envFrom`). Every process of the pod carries the env variable
  POD_MARKER: that marker is the pod's "cgroup" (torch starts its workers in new sessions, so a
  process group would not find them).
- Volumes by path rewriting: a mount path in an env value or an argument is replaced by a host
  directory. ConfigMap/Secret volumes: a per-pod directory holding the data files (read when the
  process starts); a PVC: one directory per claim in the namespace (a ReadWriteMany volume; subPath
  honoured); emptyDir and anything else: per pod. The termination message path: a per-pod file
  (KUBETRAIN_TERMINATION_LOG). HOME and TMPDIR: per pod, as a container's filesystem would be.
- Network, all on loopback: the pod IP (127.x.y.z from the node's pod CIDR) is bound as is. The
  trainer binds /metrics to it (KUBETRAIN_METRICS_HOST), torch binds PET_LOCAL_ADDR, gloo uses
  `lo`. DNS is simulated from pod objects: the host of PET_RDZV_ENDPOINT,
  `<hostname>.<subdomain>[.<ns>[.svc[.cluster.local]]]`, becomes the IP of the pod with that
  hostname and subdomain that the headless Service `<subdomain>` selects (Ready and not deleting,
  unless the Service publishes not-ready addresses); a bare `<service>` name becomes its lowest
  selected pod. Resolved once, when the process starts, like torch's rendezvous does; a process
  whose name does not resolve yet waits (as a pod retrying a lookup would).
- The rendezvous store: torch's TCPStore server listens on ALL interfaces, so on one shared
  loopback two stores cannot both use the port the pod spec names. Each (pod, port) that an endpoint
  names therefore gets its own host port (a per-pod network namespace's worth of port space), and
  the process learns whether it is the store host (`is_host` in PET_RDZV_CONF) the way torch's own
  hostname check would conclude in a real pod: the endpoint names this very pod.
- End: the exit code (128+N after signal N) and the termination message (the per-pod file, else,
  with FallbackToLogsOnError and a failure, the log's tail) are written to the pod's status as the
  kubelet would (`Cluster.terminate_pod`); then the rest of the pod's processes are killed, as a
  container runtime does when the container's main process ends.
- Deletion: KWOK deletes a pod at once (grace 0). A finalizer (FINALIZER) keeps the pod object
  Terminating while its process runs, as a kubelet's graceful stop would: SIGTERM to the main
  process, the pod's terminationGracePeriodSeconds, SIGKILL to every process of the pod, the final
  status, then the finalizer goes.
- Node lost (`Cluster.lose_node`: KWOK stops managing it): the kubelet is gone, so the pod's
  processes are frozen (SIGSTOP: peers hang, as with a crashed machine, instead of getting a
  connection reset), nothing is reported for them again, and the finalizer goes at once.
- Teardown (`stop`): every process of every pod is stopped (SIGTERM, a few seconds, SIGKILL), also
  when a test failed, and every finalizer is removed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import nodes
from tests.cluster.helpers import Cluster

log = logging.getLogger("kubetrain.e2e.podrunner")

FINALIZER = "e2e.kubetrain.dev/podrunner"
POD_MARKER = "KUBETRAIN_E2E_POD_UID"
JOB_LABEL = "kubetrain.dev/job-name"
ENDPOINT_VARS = ("PET_RDZV_ENDPOINT",)
TERMINATION_MESSAGE_MAX = 4096  # the kubelet's limit
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # FallbackToLogsOnError takes this much of the log
DEFAULT_GRACE_SECONDS = 30
TEARDOWN_GRACE_SECONDS = 5.0
# What an image and a 1-CPU container limit give a process; never the test's own environment.
BASE_ENV = {
    "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
}


# ------------------------------------------------------------------------------ pure helpers


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in env values, command and args (`$$` escapes)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_.-]*\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def field_ref(pod: dict[str, Any], path: str) -> str:
    """The downward API's fieldRef values."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ValueError(f"fieldRef {path!r} is not simulated")


def is_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def selects(service: dict[str, Any], pod: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def published(service: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether the Service's DNS answers with this pod (what the EndpointSlice controller and the
    cluster DNS would do: terminal pods never; not-ready or terminating pods only when the Service
    publishes not-ready addresses)."""
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    if (service.get("spec") or {}).get("publishNotReadyAddresses"):
        return True
    return is_ready(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def resolve(name: str, namespace: str, pods: list[dict[str, Any]],
            services: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod a cluster DNS name stands for, or None (NXDOMAIN). Names in this namespace only:
    `<hostname>.<subdomain>[.<ns>[.svc[.cluster.local]]]` (a pod record of the headless Service
    `<subdomain>`) or `<service>[.<ns>[.svc[.cluster.local]]]` (the Service: its first selected pod
    by name, as kube-proxy or a client picking the first A record would). A two-label name is
    tried as a pod record first, as the search path `<ns>.svc.cluster.local` does."""
    parts = name.lower().rstrip(".").split(".")
    qualified = False
    for suffix in (["svc", "cluster", "local"], ["svc"]):
        if len(parts) > len(suffix) and parts[-len(suffix):] == suffix:
            parts, qualified = parts[: -len(suffix)], True
            break
    if qualified or len(parts) == 3:
        if parts[-1] != namespace:
            return None
        parts = parts[:-1]
    by_name = {s["metadata"]["name"]: s for s in services}
    if len(parts) == 2:
        found = _pod_record(parts[0], by_name.get(parts[1]), pods)
        if found is None and not qualified and parts[1] == namespace:
            return _service_record(by_name.get(parts[0]), pods)
        return found
    if len(parts) == 1:
        return _service_record(by_name.get(parts[0]), pods)
    return None


def _pod_record(hostname: str, svc: dict[str, Any] | None, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    if svc is None or (svc.get("spec") or {}).get("clusterIP") != "None":
        return None  # only a headless Service publishes pod records
    name = svc["metadata"]["name"]
    found = [p for p in pods if (p.get("spec") or {}).get("hostname") == hostname
             and (p.get("spec") or {}).get("subdomain") == name and selects(svc, p) and published(svc, p)]
    # Several answers (an old pod still published): a live one, the newest.
    found.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    found.sort(key=lambda p: bool(p["metadata"].get("deletionTimestamp")))
    return found[0] if found else None


def _service_record(svc: dict[str, Any] | None, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    if svc is None:
        return None
    found = sorted((p for p in pods if selects(svc, p) and published(svc, p)), key=lambda p: p["metadata"]["name"])
    return found[0] if found else None


def split_endpoint(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, None
    return host.strip("[]"), int(port)


def exit_code(returncode: int) -> int:
    """What a container runtime reports: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked_pids(marker: str) -> list[int]:
    """Every process whose environment carries POD_MARKER=marker: all processes of one pod."""
    needle = f"{POD_MARKER}={marker}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# ------------------------------------------------------------------------------- processes


@dataclass
class PodProcess:
    """One pod's container, run as a local process."""

    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    grace: int
    fallback_to_logs: bool
    proc: subprocess.Popen[bytes]
    dir: Path
    log_path: Path
    termination_path: Path
    env: dict[str, str]
    argv: list[str]
    started: float = field(default_factory=time.monotonic)
    term_sent: float | None = None  # monotonic time of SIGTERM (deletion)
    frozen: bool = False  # its node was lost
    exit_code: int | None = None
    message: str = ""
    reported: bool = False
    finalizer: bool = True

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def pids(self) -> list[int]:
        return marked_pids(self.uid)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class PodRunnerError(RuntimeError):
    pass


class PodRunner:
    """Runs the TrainingJob pods of one namespace as local processes (see the module docstring)."""

    def __init__(self, cluster: Cluster, namespace: str, work_dir: Path, *, interval: float = 0.5,
                 resolve_timeout: float = 120.0, extra_env: dict[str, str] | None = None) -> None:
        self.cluster, self.namespace, self.work_dir = cluster, namespace, work_dir
        self.interval, self.resolve_timeout = interval, resolve_timeout
        self.extra_env = dict(extra_env or {})
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, PodProcess] = {}  # by pod uid
        self.ports: dict[tuple[str, int], int] = {}  # (pod uid, container port) -> host port
        self.waiting: dict[str, float] = {}  # pod uid -> since when its start waits (DNS, IP)
        self.wait_reason: dict[str, str] = {}
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events = (self.work_dir / "podrunner.log").open("a", buffering=1)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = client.CoreV1Api(api)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PodRunner:
        self._thread = threading.Thread(target=self._run, name=f"podrunner-{self.namespace}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop, then every process of every pod (SIGTERM, a few seconds, SIGKILL), and
        remove the finalizers so that the namespace can go."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self.lock:
            procs = list(self.processes.values())
            for p in procs:
                if p.running and not p.frozen:
                    with contextlib.suppress(ProcessLookupError):
                        p.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TEARDOWN_GRACE_SECONDS
            for p in procs:
                if p.running and not p.frozen:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.proc.wait(max(0.1, deadline - time.monotonic()))
            for p in procs:
                signal_pids(p.pids(), signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(10)
                if p.exit_code is None and p.proc.returncode is not None:
                    p.exit_code = exit_code(p.proc.returncode)
                    self._event(f"{p.name}: stopped at teardown, exit {p.exit_code}")
        try:
            for pod in self._list_pods():
                if FINALIZER in (pod["metadata"].get("finalizers") or []):
                    self._remove_finalizer(pod)
        except Exception as e:  # the cluster may be gone already; the processes are what matters
            self._event(f"teardown: could not remove finalizers: {e}")
        self._events.close()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def process(self, pod_name: str) -> PodProcess | None:
        with self.lock:
            found = [p for p in self.processes.values() if p.name == pod_name]
        return found[-1] if found else None

    def incarnations(self, pod_name: str) -> list[PodProcess]:
        """Every process started for pods of this name (a pod deleted and created again under
        the same name is a second one), oldest first."""
        with self.lock:
            return [p for p in self.processes.values() if p.name == pod_name]

    def wait_started(self, pod_name: str, timeout: float = 60) -> PodProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.process(pod_name)
            if p is not None:
                return p
            time.sleep(0.1)
        raise TimeoutError(f"pod {pod_name} was not started within {timeout:.0f}s\n{self.report()}")

    def claim_dir(self, claim: str) -> Path:
        """The host directory standing for PersistentVolumeClaim `claim` (ReadWriteMany)."""
        return self.work_dir / "claims" / claim

    def signal(self, pod_name: str, sig: int = signal.SIGKILL) -> PodProcess:
        """Send `sig` to the pod's main process (what `kill` inside the container as PID 1 gets)."""
        p = self.process(pod_name)
        if p is None or not p.running:
            raise PodRunnerError(f"pod {pod_name} has no running process")
        self._event(f"{p.name}: test sends {signal.Signals(sig).name} to pid {p.proc.pid}")
        p.proc.send_signal(sig)
        return p

    def report(self) -> str:
        """Every pod process: argv, state, exit, and the tail of its log; then the runner's own log."""
        with self.lock:
            procs = sorted(self.processes.values(), key=lambda p: p.started)
        out = []
        for p in procs:
            state = "frozen (node lost)" if p.frozen else "running" if p.running else f"exit {p.exit_code}"
            out.append(f"===== pod {p.name} on {p.node} ({p.ip}), pid {p.proc.pid}, {state}; log {p.log_path}")
            if p.message:
                out.append(f"termination message: {p.message[:500]}")
            out.append(p.log_tail())
        with contextlib.suppress(OSError):
            out.append("===== podrunner.log\n" + "\n".join(
                (self.work_dir / "podrunner.log").read_text().splitlines()[-80:]))
        return "\n".join(out)

    # -------------------------------------------------------------------- loop

    def _event(self, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        with contextlib.suppress(ValueError):  # closed at teardown
            self._events.write(f"{stamp} {text}\n")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception as e:  # a loop that died silently would hang the tests
                from kubernetes.client.exceptions import ApiException
                from urllib3.exceptions import HTTPError

                if isinstance(e, (ApiException, HTTPError, OSError)):
                    self._event(f"pass failed (retrying): {type(e).__name__}: {str(e)[:300]}")
                else:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    self._event(f"pass failed: {type(e).__name__}: {e}")
                    log.exception("podrunner pass failed")
            self._stop.wait(self.interval)

    def _get(self, fn: Any, *args: Any, **kw: Any) -> Any:
        resp = fn(*args, _preload_content=False, **kw)
        return json.loads(resp.data)

    def _list_pods(self) -> list[dict[str, Any]]:
        items = self._get(self.core.list_namespaced_pod, self.namespace, label_selector=JOB_LABEL)["items"]
        return list(items)

    def _pass(self) -> None:
        pods = self._list_pods()
        services = self._get(self.core.list_namespaced_service, self.namespace)["items"]
        node_objs = self._get(self.core.list_node)["items"]
        managed = {n["metadata"]["name"] for n in node_objs
                   if (n["metadata"].get("labels") or {}).get(nodes.MANAGED_LABEL) == "true"}
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        with self.lock:
            for uid, proc in list(self.processes.items()):
                self._tend(proc, by_uid.get(uid), managed)
            for pod in pods:
                uid = pod["metadata"]["uid"]
                if uid not in self.processes and self._startable(pod, managed):
                    self._maybe_start(pod, pods, services)

    # ------------------------------------------------------------- running pods

    def _tend(self, p: PodProcess, pod: dict[str, Any] | None, managed: set[str]) -> None:
        if p.frozen:
            if pod is None and p.pids():  # force-deleted: the machine is gone for good
                signal_pids(p.pids(), signal.SIGKILL)
                self._event(f"{p.name}: pod removed; killed its frozen processes")
            elif pod is not None:
                signal_pids(p.pids(), signal.SIGSTOP)  # anything that slipped through a fork
            return
        if p.running and p.node not in managed:
            self._freeze(p, pod)
            return
        if p.running:
            rc = p.proc.poll()
            if rc is not None:
                self._exited(p, rc, pod)
            elif pod is None or pod["metadata"].get("deletionTimestamp"):
                self._terminate(p)
        elif p.finalizer and pod is not None and not p.reported:
            self._report(p, pod)

    def _freeze(self, p: PodProcess, pod: dict[str, Any] | None) -> None:
        p.frozen = True
        signal_pids(p.pids(), signal.SIGSTOP)
        self._event(f"{p.name}: node {p.node} lost: froze pids {p.pids()}")
        if pod is not None and p.finalizer:
            self._remove_finalizer(pod)
        p.finalizer = False

    def _terminate(self, p: PodProcess) -> None:
        now = time.monotonic()
        if p.term_sent is None:
            p.term_sent = now
            self._event(f"{p.name}: deleted: SIGTERM to pid {p.proc.pid}, SIGKILL after {p.grace}s")
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
        elif now - p.term_sent > p.grace:
            self._event(f"{p.name}: grace period over: SIGKILL")
            signal_pids(p.pids(), signal.SIGKILL)

    def _exited(self, p: PodProcess, returncode: int, pod: dict[str, Any] | None) -> None:
        p.exit_code = exit_code(returncode)
        leftovers = p.pids()
        signal_pids(leftovers, signal.SIGKILL)  # the container ends with its main process
        message = ""
        with contextlib.suppress(OSError):
            message = p.termination_path.read_text(errors="replace").strip()
        if not message and p.exit_code != 0 and p.fallback_to_logs:
            message = p.log_tail(FALLBACK_LOG_LINES)[-FALLBACK_LOG_BYTES:]
        p.message = message.encode()[:TERMINATION_MESSAGE_MAX].decode(errors="ignore")
        self._event(f"{p.name}: exited {p.exit_code} after {time.monotonic() - p.started:.1f}s"
                    + (f", killed leftover pids {leftovers}" if leftovers else "")
                    + (f": {p.message[:300]}" if p.message else ""))
        if pod is not None:
            self._report(p, pod)

    def _report(self, p: PodProcess, pod: dict[str, Any]) -> None:
        """The final state into the pod's status, as the kubelet would; then the finalizer goes."""
        from kubernetes.client.exceptions import ApiException

        assert p.exit_code is not None
        if (pod.get("status") or {}).get("phase") == "Running":
            try:
                self.cluster.terminate_pod(self.namespace, p.name, p.exit_code, p.message, timeout=10)
            except ApiException as e:
                if e.status != 404:
                    raise
            except TimeoutError:
                self._event(f"{p.name}: not Running any more; status not written")
        p.reported = True
        if p.finalizer:
            self._remove_finalizer(pod)
            p.finalizer = False

    def _remove_finalizer(self, pod: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        name = pod["metadata"]["name"]
        for _ in range(5):
            try:
                current = self._get(self.core.read_namespaced_pod, name, self.namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            finalizers = current["metadata"].get("finalizers") or []
            if FINALIZER not in finalizers:
                return
            i = finalizers.index(FINALIZER)
            ops = [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": FINALIZER},
                   {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
            try:
                self.core.patch_namespaced_pod(name, self.namespace, ops)
                return
            except ApiException as e:
                if e.status == 404:
                    return
                if e.status not in (409, 422):
                    raise
        raise PodRunnerError(f"could not remove the finalizer of pod {name}")

    # --------------------------------------------------------------- new pods

    def _startable(self, pod: dict[str, Any], managed: set[str]) -> bool:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
            return False
        if spec.get("nodeName") not in managed:
            return False
        # A container that already ended (a pod finished by a test, or by an earlier podrunner).
        return not any((s.get("state") or {}).get("terminated") for s in status.get("containerStatuses") or [])

    def _maybe_start(self, pod: dict[str, Any], pods: list[dict[str, Any]], services: list[dict[str, Any]]) -> None:
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        since = self.waiting.setdefault(uid, time.monotonic())
        ip = pod["status"]["podIP"]
        if any(p.ip == ip and p.running for p in self.processes.values()):
            return  # the IP is still held by a process of a pod that went (no CNI hands it out twice)
        try:
            final = time.monotonic() - since > self.resolve_timeout
            env, argv, extra = self._container(pod, pods, services, final=final)
        except _NotYet as e:
            if self.wait_reason.get(uid) != e.message:
                self._event(f"{name}: waiting: {e.message}")
                self.wait_reason[uid] = e.message
            return
        self._spawn(pod, env, argv, extra)
        self.waiting.pop(uid, None)

    def _container(self, pod: dict[str, Any], pods: list[dict[str, Any]], services: list[dict[str, Any]],
                   final: bool) -> tuple[dict[str, str], list[str], dict[str, Any]]:
        meta, spec = pod["metadata"], pod["spec"]
        uid, ip = meta["uid"], pod["status"]["podIP"]
        container = spec["containers"][0]
        pod_dir = self.work_dir / "pods" / f"{meta['name']}-{uid[:8]}"
        for sub in ("home", "tmp", "volumes"):
            (pod_dir / sub).mkdir(parents=True, exist_ok=True)

        env: dict[str, str] = dict(BASE_ENV)
        env.update({"HOME": str(pod_dir / "home"), "TMPDIR": str(pod_dir / "tmp"),
                    "HOSTNAME": spec.get("hostname") or meta["name"]})
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._config_map(source["configMapRef"]["name"], source["configMapRef"].get("optional"))
            else:
                data = self._secret(source["secretRef"]["name"], source["secretRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            value = self._env_value(pod, item, env)
            if value is not None:
                env[item["name"]] = value

        mounts = self._mounts(pod, container, pod_dir)
        termination = pod_dir / "termination-log"
        termination.touch()
        mounts.append((container.get("terminationMessagePath") or "/dev/termination-log", termination))
        mounts.sort(key=lambda m: -len(m[0]))

        def rewrite(value: str) -> str:
            for mount_path, host in mounts:
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    return str(host) + value[len(mount_path):]
            return value

        env = {k: rewrite(v) for k, v in env.items()}
        env["KUBETRAIN_TERMINATION_LOG"] = str(termination)
        # The pod's own network identity on the shared loopback.
        env["PET_LOCAL_ADDR"] = ip
        env["KUBETRAIN_METRICS_HOST"] = ip
        env["GLOO_SOCKET_IFNAME"] = "lo"
        env.update(self.extra_env)
        extra: dict[str, Any] = {"resolved": {}}
        for var in ENDPOINT_VARS:
            if var in env:
                env[var] = self._endpoint(var, env, pod, pods, services, final, extra)
        env[POD_MARKER] = uid

        argv = [expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not argv:
            raise PodRunnerError(f"pod {meta['name']}: the container has no command "
                                 "(an image's entrypoint is not simulated)")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        argv = [argv[0], *(rewrite(a) for a in argv[1:])]
        work = container.get("workingDir")
        extra["cwd"] = rewrite(work) if work else str(pod_dir)
        extra["dir"] = pod_dir
        extra["termination"] = termination
        return env, argv, extra

    def _endpoint(self, var: str, env: dict[str, str], pod: dict[str, Any], pods: list[dict[str, Any]],
                  services: list[dict[str, Any]], final: bool, extra: dict[str, Any]) -> str:
        """DNS from pod objects, and the store's per-pod port (module docstring)."""
        host, port = split_endpoint(env[var])
        try:
            socket.inet_aton(host)
            target = next((p for p in pods if (p.get("status") or {}).get("podIP") == host), None)
        except OSError:
            target = resolve(host, self.namespace, pods, services)
            if target is None:
                if not final:
                    raise _NotYet(f"{var} host {host} does not resolve yet") from None
                self._event(f"{pod['metadata']['name']}: {host} does not resolve: pointing {var} at nothing")
                return f"127.255.255.254:{port}" if port is not None else "127.255.255.254"
        if target is None:
            return env[var]
        ip = target["status"]["podIP"]
        me = target["metadata"]["uid"] == pod["metadata"]["uid"]
        extra["resolved"][var] = f"{host} -> {target['metadata']['name']} ({ip})"
        if port is None:
            return str(ip)
        key = (target["metadata"]["uid"], port)
        if key not in self.ports:
            self.ports[key] = free_port()
        if var == "PET_RDZV_ENDPOINT":
            conf = env.get("PET_RDZV_CONF", "")
            if "is_host" not in conf:
                env["PET_RDZV_CONF"] = ",".join(filter(None, [conf, f"is_host={'true' if me else 'false'}"]))
        return f"{ip}:{self.ports[key]}"

    def _env_value(self, pod: dict[str, Any], item: dict[str, Any], env: dict[str, str]) -> str | None:
        if "value" in item:
            return expand(str(item["value"]), env)
        ref = item.get("valueFrom") or {}
        if "fieldRef" in ref:
            return field_ref(pod, ref["fieldRef"]["fieldPath"])
        if "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            return self._config_map(r["name"], r.get("optional")).get(r["key"])
        if "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            return self._secret(r["name"], r.get("optional")).get(r["key"])
        if "resourceFieldRef" in ref:
            return "1"  # every simulated container gets one CPU's worth
        return ""

    def _config_map(self, name: str, optional: bool | None) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self._get(self.core.read_namespaced_config_map, name, self.namespace)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise _NotYet(f"ConfigMap {name} not found") from None
            raise
        data = dict(cm.get("data") or {})
        data.update({k: base64.b64decode(v).decode(errors="replace") for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def _secret(self, name: str, optional: bool | None) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            s = self._get(self.core.read_namespaced_secret, name, self.namespace)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise _NotYet(f"Secret {name} not found") from None
            raise
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.get("data") or {}).items()}

    def _mounts(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> list[tuple[str, Path]]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"])
            if vol is None:
                raise PodRunnerError(f"volumeMount {mount['name']} names no volume")
            if "persistentVolumeClaim" in vol:
                root = self.claim_dir(vol["persistentVolumeClaim"]["claimName"])
            else:
                root = pod_dir / "volumes" / mount["name"]
            root.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol or "secret" in vol:
                ref = vol.get("configMap") or vol.get("secret") or {}
                data = (self._config_map(ref["name"], ref.get("optional")) if "configMap" in vol
                        else self._secret(ref.get("secretName", ""), ref.get("optional")))
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    if it["key"] in data:
                        target = root / it["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(data[it["key"]])
            host = root / mount["subPath"] if mount.get("subPath") else root
            host.mkdir(parents=True, exist_ok=True)
            out.append((mount["mountPath"], host))
        return out

    def _spawn(self, pod: dict[str, Any], env: dict[str, str], argv: list[str], extra: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        self._add_finalizer(pod)
        pod_dir: Path = extra["dir"]
        log_path = pod_dir / "container.log"
        (pod_dir / "env.json").write_text(json.dumps({"argv": argv, "env": env, **extra["resolved"]}, indent=2,
                                                     default=str))
        with log_path.open("ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=extra["cwd"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        grace = spec.get("terminationGracePeriodSeconds")
        p = PodProcess(
            namespace=self.namespace, name=meta["name"], uid=meta["uid"], node=spec.get("nodeName", ""),
            ip=pod["status"]["podIP"], grace=int(grace if grace is not None else DEFAULT_GRACE_SECONDS),
            fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            proc=proc, dir=pod_dir, log_path=log_path, termination_path=extra["termination"], env=env, argv=argv,
        )
        self.processes[meta["uid"]] = p
        resolved = "; ".join(f"{k}: {v}" for k, v in extra["resolved"].items())
        self._event(f"{p.name}: started pid {proc.pid} on {p.node} ({p.ip})" + (f"; {resolved}" if resolved else ""))

    def _add_finalizer(self, pod: dict[str, Any]) -> None:
        finalizers = pod["metadata"].get("finalizers")
        if finalizers and FINALIZER in finalizers:
            return
        ops = ([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}] if finalizers
               else [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
        # Only a pod that is still what we listed: a deleted one must not be held back.
        ops.insert(0, {"op": "test", "path": "/metadata/uid", "value": pod["metadata"]["uid"]})
        self.core.patch_namespaced_pod(pod["metadata"]["name"], self.namespace, ops)


class _NotYet(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
