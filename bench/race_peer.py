"""Kubetrain's operator raced against Kubeflow's training-operator (PyTorchJob) on one control plane.

    python bench/race_peer.py            # 5 rounds, 200 two-pod jobs
    python bench/race_peer.py --quick    # 3 rounds, 100 two-pod jobs

The peer is built once from the Go module proxy (`go install
github.com/kubeflow/training-operator/cmd/training-operator.v1@v1.8.1`, cached in
~/.cache/kubetrain/peer; ~6 min cold on 2 cores) and run outside the cluster as kubetrain's
operator is: one process each, the same admin kubeconfig, each in its own namespace
(`--namespace`), both running for the whole race. Its webhook certificates are what its
cert-controller makes; this script mounts them as a kubelet would (it copies the Secret into the
certificate directory), so the peer starts its controllers exactly as in a cluster.

Timing is the pod-watch method of operator_scale.py: a raw watch per namespace, opened before,
records when each pod (by uid) is first ADDED and when it is DELETED. Rounds alternate which
operator goes first. Rows, medians over the rounds, ratio kubetrain / peer (<= 1.0: kubetrain
as good or better):

  apply -> N pods        creation of an N-pod job (TrainingJob with N workers / PyTorchJob with
                         1 Master + N-1 Workers) until the N-th pod exists
  apply -> Running       ... until the job says Running (status.phase / condition Running)
  delete a worker -> replacement   a Running worker pod deleted until a new pod of the job exists
  delete job -> pods gone          the job deleted (background) until its last pod is gone
  idle RSS, fresh / after the rounds (0 jobs left, 15 s idle) / with J two-pod jobs Running
  operator CPU-s for J two-pod jobs (create -> all Running)
  leader failover (kubetrain only: the peer's leader election needs the in-cluster namespace
                   file, so it cannot run outside a pod; printed without a ratio)

The last line reads `race: K of N rows at or below 1.0`. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import REPO, Row, cpu_seconds, exit_on_sigterm, print_table, proc_status, stop
from operator_scale import PODS_PER_NODE, clear_namespace, ensure_capacity, free_port, new_namespace

from tests.cluster import binaries
from tests.cluster.helpers import Cluster, wait_for

CACHE = Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain"))
PEER_MODULE, PEER_VERSION = "github.com/kubeflow/training-operator", "v1.8.1"
PEER_BIN = CACHE / "peer" / "bin" / "training-operator.v1"
GOMODCACHE = CACHE / "go" / "mod"
# Fixed by the peer outside a pod (pkg/cert): its namespace, Secret, webhook configuration, cert dir.
PEER_CERT_NS, PEER_SECRET = "kubeflow", "training-operator-webhook-cert"
PEER_VWC = "training-operator-validating-webhook-configuration"
PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
MIB = 2**20


# --------------------------------------------------------------------------------- the peer


def build_peer() -> Path:
    if PEER_BIN.exists():
        return PEER_BIN
    print(f"building {PEER_MODULE}@{PEER_VERSION} (cached in {PEER_BIN.parent}; minutes)...", flush=True)
    PEER_BIN.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOBIN": str(PEER_BIN.parent), "GOMODCACHE": str(GOMODCACHE),
           "GOCACHE": str(CACHE / "go" / "build")}
    subprocess.run(["nice", "-n", "10", "go", "install", f"{PEER_MODULE}/cmd/training-operator.v1@{PEER_VERSION}"],
                   env=env, check=True)
    return PEER_BIN


def peer_crd() -> Path:
    return GOMODCACHE / f"{PEER_MODULE}@{PEER_VERSION}" / "manifests" / "base" / "crds" / \
        "kubeflow.org_pytorchjobs.yaml"


class CertMirror:
    """What a kubelet does for the peer's pod: the webhook Secret, once its cert-controller has
    filled it, appears as files in the certificate directory."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop.wait(0.3):
            try:
                data = self.cluster.core.read_namespaced_secret(PEER_SECRET, PEER_CERT_NS).data or {}
            except ApiException:
                continue
            PEER_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                path = PEER_CERT_DIR / key
                raw = base64.b64decode(value)
                if not path.exists() or path.read_bytes() != raw:
                    path.write_bytes(raw)

    def close(self) -> None:
        self._stop.set()


def prepare_peer(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(peer_crd()))
    wait_for(lambda: any(c.get("type") == "Established" and c.get("status") == "True" for c in (
        cluster.kubectl_json("get", "crd", "pytorchjobs.kubeflow.org").get("status") or {}).get("conditions") or []),
             60, "the PyTorchJob CRD established")
    if cluster.kubectl("get", "namespace", PEER_CERT_NS, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", PEER_CERT_NS)
    objs = [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": PEER_SECRET, "namespace": PEER_CERT_NS}},
        # The peer injects its CA here; no webhook is registered (both operators skip admission webhooks).
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": PEER_VWC}, "webhooks": []},
    ]
    for obj in objs:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(obj))


# ------------------------------------------------------------------------------ operators


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, health: str) -> None:
        self.name, self.log, self.health = name, log, health
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=REPO)
        wait_for(self.healthy, 180, f"{name} healthy")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.health, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def rss(self) -> float:
        return proc_status(self.proc.pid)["VmRSS"] / MIB

    def idle_rss(self, samples: int = 5) -> float:
        out = []
        for _ in range(samples):
            out.append(self.rss())
            time.sleep(0.5)
        return statistics.median(out)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc, timeout=30)


def kubetrain_op(kubeconfig: Path, ns: str, log_dir: Path, tag: str = "", extra: tuple[str, ...] = ()) -> Proc:
    health, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
    argv = [sys.executable, "-m", "kubetrain", "operator", "--namespace", ns, "--kubeconfig", str(kubeconfig),
            "--metrics-port", str(metrics), "--health-port", str(health), "--bind-address", "127.0.0.1",
            "--trainer-image", "kubetrain/trainer:bench", "--log-format", "json", *extra]
    return Proc("kubetrain", argv, env, log_dir / f"kubetrain{tag}.log", f"http://127.0.0.1:{health}/healthz")


def peer_op(kubeconfig: Path, ns: str, log_dir: Path) -> Proc:
    health, metrics, webhook = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    argv = [str(PEER_BIN), f"--kubeconfig={kubeconfig}", f"--namespace={ns}", "--enable-scheme=pytorchjob",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--webhook-server-port={webhook}"]
    return Proc("peer", argv, env, log_dir / "peer.log", f"http://127.0.0.1:{health}/readyz")


# ----------------------------------------------------------------------------------- jobs


def trainingjob(name: str, pods: int) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"workers": {"replicas": pods, "gpusPerWorker": 0}, "model": {"preset": "tiny"},
                     "training": {"globalBatchSize": 64 * 1024}}}


def pytorchjob(name: str, pods: int) -> dict[str, Any]:
    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [{
            "name": "pytorch", "image": "kubetrain/trainer:bench", "command": ["python", "-m", "train"]}]}}}

    specs = {"Master": replica(1)}
    if pods > 1:
        specs["Worker"] = replica(pods - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"pytorchReplicaSpecs": specs}}


class Side:
    """One contestant: its operator, namespace, job kind and how to read its jobs."""

    def __init__(self, name: str, ns: str, op: Proc, make: Callable[[str, int], dict[str, Any]],
                 group: str, plural: str, running: Callable[[dict[str, Any]], bool], worker: Callable[[str], str]):
        self.name, self.ns, self.op, self.make = name, ns, op, make
        self.group, self.plural, self.running, self.worker = group, plural, running, worker


def kubetrain_running(obj: dict[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("phase") == "Running")


def peer_running(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Running" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


class PodEvents:
    """A raw pod watch of one namespace: per pod uid, when it was first ADDED and when DELETED."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.added: dict[str, tuple[str, float]] = {}  # uid -> (name, t)
        self.deleted: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        rv = cluster.core.list_namespaced_pod(ns, limit=1).metadata.resource_version
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        from kubernetes import watch

        while not self._stop:
            w = watch.Watch()
            try:
                for ev in w.stream(self.cluster.core.list_namespaced_pod, self.ns, resource_version=rv,
                                   timeout_seconds=5, allow_watch_bookmarks=True, deserialize=False):
                    now = time.monotonic()
                    meta = ev["object"].get("metadata", {})
                    rv = meta.get("resourceVersion", rv)
                    with self.cond:
                        if ev["type"] == "ADDED":
                            self.added.setdefault(meta["uid"], (meta["name"], now))
                        elif ev["type"] == "DELETED":
                            self.deleted.setdefault(meta["uid"], now)
                        self.cond.notify_all()
                    if self._stop:
                        break
            except Exception:  # 410 Gone and the like: from now on
                if self._stop:
                    return
                rv = self.cluster.core.list_namespaced_pod(self.ns, limit=1).metadata.resource_version
            finally:
                w.stop()

    def wait(self, what: str, check: Callable[[], float | None], timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                t = check()
                if t is not None:
                    return t
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.ns}: {what} after {timeout:.0f}s")
                self.cond.wait(0.5)

    def pods_of(self, prefix: str) -> list[tuple[str, str, float]]:
        return sorted(((uid, n, t) for uid, (n, t) in self.added.items() if n.startswith(prefix)), key=lambda x: x[2])

    def close(self) -> None:
        self._stop = True


def get_job(cluster: Cluster, side: Side, name: str) -> dict[str, Any]:
    from kubernetes import client

    group, version = side.group.split("/")
    obj = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(group, version, side.ns, side.plural,
                                                                             name)
    return dict(obj) if isinstance(obj, dict) else {}


def one_round(cluster: Cluster, side: Side, events: PodEvents, name: str, pods: int) -> dict[str, float]:
    """apply -> N pods, -> Running; delete a worker -> replacement; delete the job -> pods gone."""
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api)
    group, version = side.group.split("/")
    prefix = f"{name}-"
    t0 = time.monotonic()
    api.create_namespaced_custom_object(group, version, side.ns, side.plural, side.make(name, pods))
    t_pods = events.wait(f"{pods} pods of {name}", lambda: ((p := events.pods_of(prefix)) and len(p) >= pods
                         and p[pods - 1][2]) or None)
    t_run = wait_for(lambda: time.monotonic() if side.running(get_job(cluster, side, name)) else None, 180,
                     f"{name} Running", 0.05)
    # A worker lost: delete a Running worker pod, until a new pod of the job exists.
    victim = side.worker(name)
    before = {uid for uid, _, _ in events.pods_of(prefix)}
    time.sleep(1.0)
    t1 = time.monotonic()
    cluster.core.delete_namespaced_pod(victim, side.ns)
    t_new = events.wait(f"a replacement for {victim}", lambda: next(
        (t for uid, _, t in events.pods_of(prefix) if uid not in before and t >= t1), None))
    wait_for(lambda: side.running(get_job(cluster, side, name)) or None, 180, f"{name} Running again", 0.1)
    time.sleep(1.0)
    # The job deleted: until its last pod is gone.
    t2 = time.monotonic()
    api.delete_namespaced_custom_object(group, version, side.ns, side.plural, name,
                                        body=client.V1DeleteOptions(propagation_policy="Background"))

    def all_gone() -> float | None:
        uids = [uid for uid, _, _ in events.pods_of(prefix)]
        return max(events.deleted[u] for u in uids) if uids and all(u in events.deleted for u in uids) else None

    t_gone = events.wait(f"the pods of {name} gone", all_gone, 180)
    return {"pods": t_pods - t0, "running": t_run - t0, "replacement": t_new - t1, "gone": t_gone - t2}


def many_jobs(cluster: Cluster, side: Side, jobs: int) -> tuple[float, float, float]:
    """`jobs` two-pod jobs created at once: (operator CPU-s until all Running, RSS then, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api)
    group, version = side.group.split("/")
    cpu0, t0 = side.op.cpu(), time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: api.create_namespaced_custom_object(
            group, version, side.ns, side.plural, side.make(f"m{i}", 2)), range(jobs)))

    def done() -> bool | None:
        out = api.list_namespaced_custom_object(group, version, side.ns, side.plural)
        items = out.get("items") or [] if isinstance(out, dict) else []
        return sum(1 for o in items if side.running(o)) >= jobs or None

    wait_for(done, 900, f"{jobs} {side.name} jobs Running", 1.0)
    took, cpu, rss = time.monotonic() - t0, side.op.cpu() - cpu0, side.op.rss()
    cluster.kubectl("delete", side.plural, "--all", "-n", side.ns, "--wait=false", timeout=300)
    clear_namespace(cluster, side.ns)
    return cpu, rss, took


def failover(cluster: Cluster, kubeconfig: Path, log_dir: Path) -> float:
    """kubetrain: two replicas with --leader-elect; SIGKILL the leader; seconds until the standby
    holds the Lease."""
    ns = new_namespace(cluster, "race-ha")
    extra = ("--leader-elect", f"--leader-election-namespace={ns}")

    def holder() -> str:
        out = cluster.kubectl("get", "lease", "kubetrain-operator", "-n", ns, "-o", "json", check=False)
        return str((json.loads(out.stdout).get("spec") or {}).get("holderIdentity") or "") \
            if out.returncode == 0 else ""

    a = kubetrain_op(kubeconfig, ns, log_dir, "-a", extra)
    b = None
    try:
        first = wait_for(lambda: holder() or None, 30, "a leader")
        b = kubetrain_op(kubeconfig, ns, log_dir, "-b", extra)
        time.sleep(3)
        a.kill()
        t0 = time.monotonic()
        wait_for(lambda: ((h := holder()) and h != first) or None, 60, "the standby to lead", 0.05)
        return time.monotonic() - t0
    finally:
        a.kill()
        if b is not None:
            b.stop()


# ----------------------------------------------------------------------------------- main


def race(cluster: Cluster, kubeconfig: Path, log_dir: Path, rounds: int, pods: int, jobs: int) -> list[Row]:
    ours_ns, peer_ns = new_namespace(cluster, "race-kubetrain"), new_namespace(cluster, "race-peer")
    mirror = CertMirror(cluster)
    ours = Side("kubetrain", ours_ns, kubetrain_op(kubeconfig, ours_ns, log_dir), trainingjob,
                "kubetrain.dev/v1alpha1", "trainingjobs", kubetrain_running, lambda n: f"{n}-worker-1-0-0")
    peer = Side("peer", peer_ns, peer_op(kubeconfig, peer_ns, log_dir), pytorchjob, "kubeflow.org/v1",
                "pytorchjobs", peer_running, lambda n: f"{n}-worker-1")
    sides = (ours, peer)
    events = {s.name: PodEvents(cluster, s.ns) for s in sides}
    try:
        time.sleep(5)
        fresh = {s.name: s.op.idle_rss() for s in sides}
        results: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
        for i in range(rounds + 1):  # round 0 warms both up
            for side in (sides if i % 2 == 0 else sides[::-1]):
                r = one_round(cluster, side, events[side.name], f"r{i}", pods)
                print(f"  round {i}{' (warm-up)' if i == 0 else ''} {side.name}: "
                      + ", ".join(f"{k} {v:.3f}s" for k, v in r.items()), flush=True)
                if i:
                    results[side.name].append(r)
        time.sleep(15)  # idle: nothing left to do
        after = {s.name: s.op.idle_rss() for s in sides}
        many: dict[str, tuple[float, float, float]] = {}
        for side in (sides if rounds % 2 == 0 else sides[::-1]):
            many[side.name] = many_jobs(cluster, side, jobs)
            print(f"  {jobs} two-pod jobs, {side.name}: CPU {many[side.name][0]:.2f} s, RSS "
                  f"{many[side.name][1]:.1f} MiB, all Running after {many[side.name][2]:.1f} s", flush=True)
    finally:
        for e in events.values():
            e.close()
        for s in sides:
            s.op.stop()
        mirror.close()
    took = failover(cluster, kubeconfig, log_dir)
    print(f"  leader failover (kubetrain, 2 replicas): the standby led {took:.1f} s after the leader's SIGKILL",
          flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    rows = [Row(f"apply -> {pods} pods (median of {rounds})", med("kubetrain", "pods"), med("peer", "pods"),
                "<= 1.0 x", None, " s"),
            Row("apply -> job Running", med("kubetrain", "running"), med("peer", "running"), "<= 1.0 x", None, " s"),
            Row("delete a worker -> replacement exists", med("kubetrain", "replacement"), med("peer", "replacement"),
                "<= 1.0 x", None, " s"),
            Row("delete job -> pods gone", med("kubetrain", "gone"), med("peer", "gone"), "<= 1.0 x", None, " s"),
            Row("idle RSS, fresh (MiB)", fresh["kubetrain"], fresh["peer"], "<= 1.0 x", None),
            Row(f"idle RSS after {rounds + 1} rounds, 0 jobs (MiB)", after["kubetrain"], after["peer"], "<= 1.0 x",
                None),
            Row(f"RSS with {jobs} two-pod jobs Running (MiB)", many["kubetrain"][1], many["peer"][1], "<= 1.0 x",
                None),
            Row(f"operator CPU-s for {jobs} two-pod jobs", many["kubetrain"][0], many["peer"][0], "<= 1.0 x",
                None, " s")]
    for r in rows:
        r.ok = r.ratio is not None and r.ratio <= 1.0
    rows.append(Row("kubetrain: idle RSS after the rounds / its own fresh idle", after["kubetrain"],
                    fresh["kubetrain"], "<= 1.1 x", after["kubetrain"] <= 1.1 * fresh["kubetrain"]))
    rows.append(Row("leader failover, kubetrain (peer: n/a outside a pod)", took, None, "<= 15 s", took <= 15,
                    " s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, 100 two-pod jobs")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--pods", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the operators' logs")
    args = ap.parse_args()
    exit_on_sigterm()
    rounds = args.rounds or (3 if args.quick else 5)
    jobs = args.jobs or (100 if args.quick else 200)
    build_peer()
    log_dir = Path(tempfile.mkdtemp(prefix="kubetrain-bench-race-"))
    existing = os.environ.get("KUBECONFIG_KUBETRAIN_TEST")
    cp = None
    load0 = os.getloadavg()
    try:
        if existing:
            cluster = Cluster.connect(Path(existing))
        else:
            from tests.cluster.launcher import ControlPlane

            cp = ControlPlane(node_count=-(-(4 * jobs + 2 * args.pods) // PODS_PER_NODE) + 1)
            info = cp.start()
            cluster = Cluster(kubeconfig=Path(info.kubeconfig), kubectl_bin=info.kubectl, node_count=cp.node_count)
        ensure_capacity(cluster, 4 * jobs + 2 * args.pods)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "manifests" / "crd.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.kubetrain.dev")
        prepare_peer(cluster)
        for ns in ("race-kubetrain", "race-peer", "race-ha"):
            if cluster.kubectl("get", "namespace", ns, check=False).returncode == 0:
                cluster.kubectl("delete", "namespace", ns, "--timeout=120s", check=False, timeout=150)
        rows = race(cluster, cluster.kubeconfig, log_dir, rounds, args.pods, jobs)
        load1 = os.getloadavg()
        print_table(f"kubetrain vs Kubeflow training-operator {PEER_VERSION} (baseline: the peer; ratio "
                    "kubetrain/peer)", rows,
                    [f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; {os.cpu_count()} CPUs",
                     f"logs in {log_dir}" if args.keep else "logs: --keep"])
        raced = [r for r in rows if r.target == "<= 1.0 x"]
        print(f"race: {sum(1 for r in raced if r.ok)} of {len(raced)} rows at or below 1.0")
    finally:
        if cp is not None:
            cp.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(log_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            if existing:
                for ns in ("race-kubetrain", "race-peer", "race-ha"):
                    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


if __name__ == "__main__":
    if binaries.find("kubectl") is None:
        sys.exit("control-plane binaries missing: run `bash tests/cluster/build.sh`")
    main()
