"""Operator at scale on a real control plane (DESIGN.md: apply -> all pods of a 64-worker job
created < 1 s; 500 jobs reconciled with operator RSS < 200 MB).

    python bench/operator_scale.py            # 7 rounds of (a), 500 jobs in (b)   (~4-5 min here)
    python bench/operator_scale.py --quick    # 3 rounds of (a), 250 jobs in (b)   (~2 min here)
    python bench/operator_scale.py --profile  # + the operator's API-call trace and stack samples

(a) `kubectl create` of a TrainingJob with 64 workers (gpusPerWorker 0) until the 64th worker pod
    exists, seen by a pod watch opened beforehand.  Baseline, same run: the operator's own API client
    (kubetrain.controller.kubeio.Kube, its 32-thread pool) creating 64 identical bare pods in parallel, timed
    the same way (the API floor).  Rounds alternate which goes first.
(b) 500 TrainingJobs (replicas 1) created at once; the time until every one is Running with its
    worker ready, and the operator's VmRSS (/proc/<pid>/status) once all are; baseline: its VmRSS
    with 0 jobs, after start-up.  (--quick: 250 jobs, and the RSS extrapolated linearly to 500.)

The control plane comes from tests/cluster (etcd, kube-apiserver, controller-manager, scheduler,
KWOK nodes), started here and stopped at the end, or the one in $KUBECONFIG_KUBETRAIN_TEST.  The
operator runs as `python -m kubetrain operator` (admin kubeconfig, default settings otherwise).
Not a test: figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import REPO, Row, cpu_seconds, exit_on_sigterm, print_table, proc_status, stop

from tests.cluster import binaries, nodes
from tests.cluster.helpers import Cluster, wait_for

GROUP, VERSION, PLURAL = "kubetrain.dev", "v1alpha1", "trainingjobs"
PODS_PER_NODE = int(nodes.CAPACITY["pods"])
TARGET_JOBS = 500  # DESIGN.md: 500 jobs reconciled with operator RSS < 200 MB


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tj(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"workers": {"replicas": replicas, "gpusPerWorker": 0},
                 "model": {"preset": "tiny"}, "training": {"globalBatchSize": 64 * 1024}},
    }


# ------------------------------------------------------------------------------ the operator


class Operator:
    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, profile: bool = False) -> None:
        self.health, self.metrics = free_port(), free_port()
        self.log = log_dir / f"operator-{namespace}.log"
        self.stacks = log_dir / f"operator-{namespace}.stacks.txt"
        self.trace = log_dir / f"operator-{namespace}.trace.jsonl"
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
        prof = [str(Path(__file__).with_name("optrace.py")), str(self.trace), "--stacks", str(self.stacks)] \
            if profile else []
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *prof, "-m", "kubetrain", "operator", "--namespace", namespace,
                 "--kubeconfig", str(kubeconfig), "--metrics-port", str(self.metrics),
                 "--health-port", str(self.health), "--bind-address", "127.0.0.1",
                 "--trainer-image", "kubetrain/trainer:bench", "--log-format", "json"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
            )
        wait_for(self.healthy, 90, "operator /healthz")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def traced(self, since: float) -> list[dict[str, Any]]:
        """Trace records (bench/optrace.py) that started at or after `since` (time.monotonic)."""
        if not self.trace.exists():
            return []
        out = []
        for line in self.trace.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec["t"] >= since:
                    out.append(rec)
        return out

    def rss(self) -> dict[str, int]:
        return proc_status(self.proc.pid)

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        out = {}
        for line in lines:
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    def stop(self) -> None:
        stop(self.proc, timeout=30)


# ------------------------------------------------------------------------------- pod watch


class PodWatch:
    """First time each pod of a namespace is seen (perf_counter), from a raw watch (no model
    deserialisation, so timestamps are not delayed by the client)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        rv = cluster.core.list_namespaced_pod(namespace, limit=1).metadata.resource_version
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self, rv: str) -> None:
        from kubernetes import watch

        while not self._stop:
            w = watch.Watch()
            try:
                self.ready.set()
                for ev in w.stream(self.cluster.core.list_namespaced_pod, self.namespace, resource_version=rv,
                                   timeout_seconds=5, allow_watch_bookmarks=True, deserialize=False):
                    now = time.monotonic()
                    obj = ev["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] == "ADDED":
                        with self.cond:
                            self.seen.setdefault(obj["metadata"]["name"], now)
                            self.cond.notify_all()
                    if self._stop:
                        break
            except Exception as e:  # 410 Gone and the like: start over from now
                if self._stop:
                    return
                print(f"  (pod watch restarted: {type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
                rv = self.cluster.core.list_namespaced_pod(self.namespace, limit=1).metadata.resource_version
            finally:
                w.stop()

    def wait_count(self, prefix: str, count: int, timeout: float) -> list[float]:
        """Times at which the pods named prefix* were first seen, once `count` of them were."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                times = sorted(t for name, t in self.seen.items() if name.startswith(prefix))
                if len(times) >= count:
                    return times
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(times)}/{count} pods {prefix}* after {timeout:.0f}s")
                self.cond.wait(min(left, 1.0))

    def close(self) -> None:
        self._stop = True


# ------------------------------------------------------------------------------------ parts


def ensure_capacity(cluster: Cluster, pods: int) -> list[str]:
    """Enough KWOK nodes for `pods` pods (110 per node); returns the names of nodes added."""
    have = {n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]}
    want = -(-pods // PODS_PER_NODE) + 1
    added: list[str] = []
    i = 0
    while len(have) + len(added) < want:
        if nodes.name(i) not in have:
            cluster.kubectl("create", "-f", "-", stdin=json.dumps(nodes.manifest(i)))
            added.append(nodes.name(i))
        i += 1
    if added:
        wait_for(lambda: set(added) <= nodes.ready_names(cluster._kubectl_out), 60, "added KWOK nodes Ready")
    return added


def new_namespace(cluster: Cluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             30, f"serviceaccount default in {name}")
    return name


def clear_namespace(cluster: Cluster, ns: str, what: str = "pods") -> None:
    cluster.kubectl("delete", what, "--all", "-n", ns, "--grace-period=0", "--force", "--wait=false",
                    check=False, timeout=120)
    wait_for(lambda: not cluster.kubectl_json("get", "pods", "-n", ns)["items"], 120, f"{ns} without pods", 0.5)


def bare_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    """An operator-made worker pod as a bare pod: same spec, no owner, fresh name."""
    meta = template["metadata"]
    spec = dict(template["spec"])
    spec.pop("nodeName", None)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {**meta.get("labels", {}), "kubetrain.dev/job-name": "bare-" + name.split("-")[1]},
                     "annotations": meta.get("annotations", {})},
        "spec": spec,
    }


def job_phase(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", "tj", name, "-n", ns)
    return dict(obj.get("status") or {})


def bare_creator(kubeconfig: str) -> None:
    """A process of its own (as the operator is): load the operator's client, warm its connection,
    then for every line of JSON manifests on stdin create them in parallel and print the time."""
    from kubetrain.controller.kubeio import Kube, load_client

    kube = Kube(load_client(kubeconfig, pool=32))
    kube.call("GET", "/api/v1/namespaces/default")
    pool = ThreadPoolExecutor(32)
    print("ready", flush=True)
    for line in sys.stdin:
        manifests = json.loads(line)
        t0 = time.monotonic()
        list(pool.map(kube.create, manifests))
        print(json.dumps({"seconds": time.monotonic() - t0}), flush=True)


class BareCreator:
    def __init__(self, kubeconfig: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-creator", str(kubeconfig)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare-pod creator did not start")

    def create(self, manifests: list[dict[str, Any]]) -> float:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(manifests) + "\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline())["seconds"])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # its loop ends: it exits by itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        stop(self.proc, timeout=10)


@dataclass
class Ctx:
    cluster: Cluster
    log_dir: Path
    profile: bool
    components: dict[str, int]  # control-plane process name -> pid (empty on a reused cluster)

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.components.items()}


def cpu_line(before: dict[str, float], after: dict[str, float]) -> str:
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.01)


def timeline(trace: list[dict[str, Any]], t0: float, ns: str, name: str, t_kubectl: float,
             seen: list[float]) -> str:
    """Where the time of one apply went, from the operator's trace (ms after `kubectl create` started)."""
    key = f"{ns}/{name}"

    def ms(t: float) -> str:
        return f"{(t - t0) * 1e3:6.0f}"

    lines = [f"    timeline of {name} (ms after kubectl started):", f"    {ms(t_kubectl)}  kubectl create returned"]
    adds = [r for r in trace if r["ev"] == "add" and r["key"] == key]
    if adds:
        lines.append(f"    {ms(adds[0]['t'])}  first work-queue add of the job (kopf watch event)")
    passes = sorted((r for r in trace if r["ev"] == "pass" and r["key"] == key), key=lambda r: r["t"])
    if passes:
        p = passes[0]
        lines.append(f"    {ms(p['t'])}  first pass starts")
        calls = sorted((r for r in trace if r["ev"] == "call" and p["t"] <= r["t"] <= p["t"] + p["d"]),
                       key=lambda r: r["t"])
        pod_posts = [r for r in calls if r["method"] == "POST" and r["path"].endswith("/pods")]
        for r in calls:
            if r in pod_posts:
                continue
            what = r["path"].replace(f"/namespaces/{ns}", "").split("?")[0]
            lines.append(f"    {ms(r['t'])}  +{r['d'] * 1e3:4.0f} ms  {r['method']} {what}")
        if pod_posts:
            durs = sorted(r["d"] for r in pod_posts)
            lines.append(f"    {ms(pod_posts[0]['t'])}  {len(pod_posts)} pod POSTs: first starts; last ends at "
                         f"{ms(max(r['t'] + r['d'] for r in pod_posts)).strip()}; each {durs[0] * 1e3:.0f}-"
                         f"{durs[-1] * 1e3:.0f} ms (median {durs[len(durs) // 2] * 1e3:.0f})")
        lines.append(f"    {ms(p['t'] + p['d'])}  first pass ends ({len(passes)} passes of this job so far)")
    lines.append(f"    {ms(seen[0])}  first pod seen by the watch; {ms(seen[-1]).strip()} the last")
    return "\n".join(lines)


def wait_running(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        s = job_phase(cluster, ns, name)
        return s if s.get("phase") == "Running" else None

    return wait_for(running, 180, f"{name} Running", 0.5)


def part_a(ctx: Ctx, rounds: int, replicas: int) -> list[Row]:
    cluster, kubeconfig, log_dir = ctx.cluster, ctx.kubeconfig, ctx.log_dir
    ns = new_namespace(cluster, "bench-apply")
    op = Operator(kubeconfig, ns, log_dir, ctx.profile)
    creator = BareCreator(kubeconfig)
    watch = PodWatch(cluster, ns)
    ours: list[float] = []
    floor: list[float] = []
    splits: list[tuple[float, float, float]] = []
    template: dict[str, Any] | None = None
    try:
        # A warm-up job: the first pass pays one-off costs (imports, CEL compile, connections).
        for i in range(rounds + 1):
            order = ["op", "bare"] if i % 2 == 0 or template is None else ["bare", "op"]
            for what in order:
                if what == "op":
                    name = f"j{i}"
                    job_file = log_dir / f"{name}.json"
                    job_file.write_text(json.dumps(tj(name, replicas)))
                    cpu0 = {**ctx.cpu(), "operator": op.cpu()}
                    t0 = time.monotonic()
                    subprocess.run([cluster.kubectl_bin, f"--kubeconfig={kubeconfig}", "create", "-n", ns,
                                    "-f", str(job_file)], check=True, capture_output=True)
                    t_kubectl = time.monotonic()
                    times = watch.wait_count(f"{name}-worker-", replicas, 120)
                    t_last = times[replicas - 1]
                    cpu1 = {**ctx.cpu(), "operator": op.cpu()}
                    running = time.monotonic()
                    st = wait_running(cluster, ns, name)
                    if i > 0:
                        ours.append(t_last - t0)
                        splits.append((t_kubectl - t0, times[0] - t0, t_last - times[0]))
                    print(f"  round {i}{' (warm-up)' if i == 0 else ''}: apply -> {replicas} pods {t_last - t0:.3f}s "
                          f"(kubectl returned {t_kubectl - t0:.3f}s, first pod {times[0] - t0:.3f}s); "
                          f"Running with {(st.get('workers') or {}).get('ready')} ready "
                          f"{time.monotonic() - running:.1f}s later; CPU s until the last pod: "
                          f"{cpu_line(cpu0, cpu1)}", flush=True)
                    if ctx.profile:
                        print(timeline(op.traced(t0), t0, ns, name, t_kubectl, times), flush=True)
                    if template is None:
                        template = cluster.kubectl_json("get", "pod", f"{name}-worker-0-0-0", "-n", ns)
                    cluster.kubectl("delete", "tj", name, "-n", ns, "--wait=false")
                else:
                    assert template is not None
                    manifests = [bare_pod(template, f"b{i}-{k}") for k in range(replicas)]
                    cpu0 = {**ctx.cpu(), "creator": cpu_seconds(creator.proc.pid)}
                    t0 = time.monotonic()
                    creates = creator.create(manifests)
                    times = watch.wait_count(f"b{i}-", replicas, 120)
                    cpu1 = {**ctx.cpu(), "creator": cpu_seconds(creator.proc.pid)}
                    if i > 0:
                        floor.append(times[replicas - 1] - t0)
                    print(f"  round {i}{' (warm-up)' if i == 0 else ''}: {replicas} bare pods "
                          f"{times[replicas - 1] - t0:.3f}s (the creates took {creates:.3f}s in the creator); "
                          f"CPU s: {cpu_line(cpu0, cpu1)}", flush=True)
                clear_namespace(cluster, ns)
    finally:
        watch.close()
        op.stop()
        creator.stop()
    m, b = statistics.median(ours), statistics.median(floor)
    k, first, spread = (statistics.median(x) for x in zip(*splits, strict=True))
    print(f"  median split: kubectl create {k:.3f}s | to the first pod {first:.3f}s | first -> {replicas}th pod "
          f"{spread:.3f}s", flush=True)
    return [Row(f"(a) apply -> {replicas} pods exist (median of {rounds})", m, b, "< 1 s", m < 1.0, " s")]


def part_b(ctx: Ctx, jobs: int, timeout: float) -> list[Row]:
    from kubernetes import client

    cluster = ctx.cluster
    ns = new_namespace(cluster, "bench-many")
    op = Operator(ctx.kubeconfig, ns, ctx.log_dir, ctx.profile)
    custom = client.CustomObjectsApi(cluster.api)
    try:
        samples = []
        for _ in range(6):
            time.sleep(0.5)
            samples.append(op.rss()["VmRSS"])
        rss0 = statistics.median(samples)
        print(f"  operator RSS with 0 jobs: {rss0 / 2**20:.1f} MiB", flush=True)

        cpu0 = {**ctx.cpu(), "operator": op.cpu()}
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, tj(f"m{i:04d}", 1)), range(jobs)))
        created = time.monotonic() - t0
        print(f"  {jobs} TrainingJobs created in {created:.1f}s", flush=True)
        peak = 0
        last_print = 0.0

        def steady() -> bool:
            nonlocal peak, last_print
            peak = max(peak, op.rss().get("VmRSS", 0))
            listed: Any = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
            items = listed["items"]
            done = sum(1 for o in items if (o.get("status") or {}).get("phase") == "Running"
                       and ((o.get("status") or {}).get("workers") or {}).get("ready") == 1)
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(f"    {time.monotonic() - t0:5.0f}s: {done}/{jobs} Running, operator RSS "
                      f"{op.rss().get('VmRSS', 0) / 2**20:.0f} MiB", flush=True)
            return done == jobs

        wait_for(steady, timeout, f"{jobs} jobs Running", 1.0)
        took = time.monotonic() - t0
        cpu1 = {**ctx.cpu(), "operator": op.cpu()}
        time.sleep(3)  # passes triggered by the last status writes
        rss = op.rss()
        metrics = op.scrape()
        passes = metrics.get("kubetrain_reconcile_duration_seconds_count", 0)
        pass_s = metrics.get("kubetrain_reconcile_duration_seconds_sum", 0)
        print(f"  all {jobs} Running after {took:.1f}s; operator RSS {rss['VmRSS'] / 2**20:.1f} MiB "
              f"(peak {rss['VmHWM'] / 2**20:.1f} MiB); {passes:.0f} passes, mean {pass_s / max(1, passes) * 1e3:.0f} ms, "
              f"errors {metrics.get('kubetrain_reconcile_errors_total', 0):.0f}", flush=True)
        print(f"  CPU seconds used meanwhile: {cpu_line(cpu0, cpu1)} (wall {took:.1f}s, 2 cores shared)", flush=True)
    finally:
        op.stop()
    mib = 2**20
    rows = [Row(f"(b) operator RSS, {jobs} jobs Running (MiB)", rss["VmRSS"] / mib, rss0 / mib, "< 200 MB",
                rss["VmRSS"] < 200e6 if jobs >= TARGET_JOBS else None)]
    # --quick: linear in the number of jobs from the two points measured -- conservative (the first
    # jobs also pay one-off costs: modules imported lazily, connection pools), meaningless for few jobs
    if 100 <= jobs < TARGET_JOBS:
        at = rss0 + (rss["VmRSS"] - rss0) * TARGET_JOBS / jobs
        rows.append(Row(f"(b) ... extrapolated to {TARGET_JOBS} jobs (MiB)", at / mib, rss0 / mib, "< 200 MB",
                        at < 200e6))
    return [
        *rows,
        Row("(b) operator peak RSS (VmHWM) (MiB)", rss["VmHWM"] / mib, rss0 / mib, "-", None),
        Row(f"(b) {jobs} jobs created -> all Running (s)", took, None, "-", None, " s"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds of (a), 250 jobs in (b)")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds of (a) (default 7, --quick 3)")
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=None, help="jobs in (b) (default 500; --quick 250, extrapolated)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the operator logs (kept anyway with --profile)")
    ap.add_argument("--profile", action="store_true",
                    help="run the operator under bench/stackprof.py (stacks in the log dir)")
    ap.add_argument("--bare-creator", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    exit_on_sigterm()
    if args.bare_creator:
        bare_creator(args.bare_creator)
        return
    rounds = args.rounds or (3 if args.quick else 7)
    args.jobs = args.jobs or (TARGET_JOBS // 2 if args.quick else TARGET_JOBS)

    log_dir = Path(tempfile.mkdtemp(prefix="kubetrain-bench-operator-"))
    existing = os.environ.get("KUBECONFIG_KUBETRAIN_TEST")
    cp = None
    added: list[str] = []
    namespaces: list[str] = []
    try:
        if existing:
            cluster = Cluster.connect(Path(existing))
            print(f"using the cluster in {existing}")
        else:
            from tests.cluster.launcher import ControlPlane

            t = time.monotonic()
            cp = ControlPlane(node_count=-(-(args.jobs + args.replicas) // PODS_PER_NODE) + 1)
            info = cp.start()
            cluster = Cluster(kubeconfig=Path(info.kubeconfig), kubectl_bin=info.kubectl, node_count=cp.node_count)
            print(f"control plane started in {time.monotonic() - t:.1f}s ({cp.node_count} KWOK nodes)", flush=True)
        added = ensure_capacity(cluster, args.jobs + args.replicas)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "manifests" / "crd.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.kubetrain.dev")
        for ns in ("bench-apply", "bench-many"):  # leftovers of an interrupted run on a reused cluster
            if cluster.kubectl("get", "namespace", ns, check=False).returncode == 0:
                cluster.kubectl("delete", "namespace", ns, "--timeout=120s", check=False, timeout=150)
        ctx = Ctx(cluster, log_dir, args.profile, dict(cp.info.pids) if cp is not None and cp.info else {})
        rows: list[Row] = []
        if not args.skip_a:
            print(f"(a) {args.replicas}-worker job, {rounds} rounds + 1 warm-up", flush=True)
            namespaces.append("bench-apply")
            rows += part_a(ctx, rounds, args.replicas)
        if not args.skip_b:
            print(f"(b) {args.jobs} jobs", flush=True)
            namespaces.append("bench-many")
            rows += part_b(ctx, args.jobs, 600)
        keep = args.profile or args.keep
        print_table("operator at scale (baseline (a): the same client creating bare pods; (b): RSS with 0 jobs)",
                    rows, [f"operator logs{', traces and stack samples' if args.profile else ''} in {log_dir}"
                           if keep else "operator logs: --keep"])
    finally:
        if cp is not None:
            cp.stop()
        if not (args.profile or args.keep):
            import shutil

            shutil.rmtree(log_dir, ignore_errors=True)
        elif existing:
            for ns in namespaces:
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            for name in added:
                cluster.delete_node(name)


if __name__ == "__main__":
    if binaries.find("kubectl") is None:
        sys.exit("control-plane binaries missing: run `bash tests/cluster/build.sh`")
    main()
