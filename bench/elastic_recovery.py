"""Elastic recovery: a worker is lost -> training resumed at the new world size (DESIGN.md: <= 15 s).

    python bench/elastic_recovery.py           # 2 kills (B rejoins in between)
    python bench/elastic_recovery.py --quick   # 1 kill

Two launcher processes (`python -m kubetrain_trainer.launch`, what each pod runs) on loopback with
the environment `kubetrain local` gives its workers (kubetrain.tools.localrun.launcher_env: c10d
rendezvous, A hosts the store), made elastic as the operator makes pods: PET_NNODES=1:2 and
PET_MAX_RESTARTS=spec.elastic.maxRestarts.  Once both train at world size 2 and a checkpoint
exists at world 2, B (launcher + worker) is SIGKILLed — a lost pod — and the time until A's
metrics.jsonl has a step at world size 1 is measured, with a breakdown from A's log (when A's
agent saw the failure, when the new rendezvous completed, when the worker restored the checkpoint).

Baseline, same run: a cold start of one launcher (PET_NNODES=1) on the same run directory until
its first step: process start, rendezvous of one node, model build and checkpoint restore — what
any resume costs.  The difference is what losing a peer adds (detection + the elastic rendezvous).
The rendezvous settings are api.constants.RENDEZVOUS_CONF (what pods and `kubetrain local` get);
`--rdzv-conf keep_alive_interval=5,last_call_timeout=30,close_timeout=30` measures torch's
defaults for comparison.  Also counted: the survivor's worker-group restarts when B joins again
(a normal scale-up: one restart admits the new node; more would be extra).  Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, Row, exit_on_sigterm, kill_tree, print_table, stop

from kubetrain.api import TrainingJob
from kubetrain.tools.localrun import LocalOptions, free_port, launcher_env

MODELS: dict[str, dict[str, Any]] = {
    "small": {"preset": "tiny", "nLayers": 4, "nHeads": 4, "dModel": 256, "vocabSize": 4096, "seqLen": 128},
    "124M": {"preset": "124M", "seqLen": 128},
}


def job(model: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "elastic-bench"},
        "spec": {
            "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
            "model": MODELS[model],
            "training": {"maxSteps": 10**6, "globalBatchSize": 8, "microBatchSize": 4},
            "optimizer": {"lr": 1e-3},
            "checkpoint": {"intervalSteps": 10, "keep": 2},
        },
    }


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "loss" in rec and "world_size" in rec:
                out.append(rec)
    return out


def latest_step(run_dir: Path) -> int:
    try:
        return int((run_dir / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return 0


def wait(what: str, cond: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> float:
    """Poll every 50 ms; returns time.time() when `cond` first held."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"launcher pid {p.pid} exited {p.returncode} while waiting for {what}")
        time.sleep(0.05)


_STAMP = re.compile(r"^\[(?:launch|rank\d+)\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")
# torch.distributed.elastic's own lines (glog style): I1130 07:43:23.030000 4916 path.py:941] message
_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d{6}) +\d+ \S+\] (.*)$")


def log_events(log: Path, since: float) -> list[tuple[float, str]]:
    """(time.time(), message) of the lines of a launcher's log (its own, its agent's, its worker's)
    written at or after `since`."""
    year = dt.datetime.now().year
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if m := _STAMP.match(line):
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            msg = m.group(2)
        elif m := _GLOG.match(line):
            t = dt.datetime.strptime(f"{year}-{m.group(1)}-{m.group(2)} {m.group(3)}", "%Y-%m-%d %H:%M:%S.%f").timestamp()
            msg = m.group(4)
        else:
            continue
        if t >= since - 0.001:
            out.append((t, msg))
    return out


# What the survivor's log says, in the order it happens.
BREAKDOWN = [
    ("worker's collective fails (peer gone)", re.compile(r"^unexpected failure")),
    ("agent: worker group failed, restarts it", re.compile(r"Worker group FAILED")),
    ("new rendezvous complete (world 1)", re.compile(r"Rendezvous complete for workers")),
    ("worker started, model built", re.compile(r"^model .* params")),
    ("checkpoint restored", re.compile(r"^loaded checkpoint")),
]


# The survivor's agent restarting its workers (to admit a new node, or after a failure).
RESTART = re.compile(r"will restart worker group|Worker group FAILED")


class Launchers:
    def __init__(self, base: Path, model: str, rdzv_conf: str = "") -> None:
        self.rdzv_conf = rdzv_conf
        self.base = base
        self.spec = base / "job.json"
        self.spec.write_text(json.dumps(job(model)))
        self.job = TrainingJob.model_validate(job(model))
        self.run_dir = base / "run"
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, index: int, nnodes: str, port: int | None = None) -> subprocess.Popen[bytes]:
        opts = LocalOptions(spec_path=self.spec, workers=2, procs_per_worker=1, run_dir=self.run_dir, quiet=True)
        env = launcher_env(self.job, opts, index, port or self.port)
        env.update({
            "PET_NNODES": nnodes,
            # What a pod gets (builders.py): torchrun may restart the worker group after a peer is lost.
            "PET_MAX_RESTARTS": str(self.job.spec.elastic.max_restarts),
            "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'trainer_image'}",
            "KUBETRAIN_TERMINATION_LOG": str(self.base / f"termination-{name}.json"),
            "LOGLEVEL": "INFO",  # torch.distributed.elastic's own log: rendezvous rounds, for the breakdown
        })
        if self.rdzv_conf:
            env["PET_RDZV_CONF"] = ",".join(filter(None, [env.get("PET_RDZV_CONF", ""), self.rdzv_conf]))
        log = self.base / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "kubetrain_trainer.launch"], env=env, cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs.values() if p.poll() is None]

    def stop_all(self) -> None:
        for p in self.procs.values():
            stop(p, timeout=60)


def kill_round(ls: Launchers, i: int) -> dict[str, Any]:
    run = ls.run_dir
    t_join = time.time()
    if "B" not in ls.procs or ls.procs["B"].poll() is not None:
        ls.start("B", 1, "1:2")
    n0 = len(records(run))
    wait("steps at world size 2", lambda: sum(r["world_size"] == 2 for r in records(run)[n0:]) >= 3, 300, ls.alive())
    joined = log_events(ls.logs["A"], t_join)
    restarts = sum(1 for _, msg in joined if RESTART.search(msg)) if i > 1 else None
    at2 = max(r["step"] for r in records(run) if r["world_size"] == 2)
    wait("a checkpoint at world size 2", lambda: latest_step(run) > at2, 300, ls.alive())
    n_before = len(records(run))
    last_ckpt = latest_step(run)
    t_kill = time.time()
    kill_tree(ls.procs["B"])
    t_back = wait("a step at world size 1", lambda: any(r["world_size"] == 1 for r in records(run)[n_before:]),
                  300, ls.alive())
    first = next(r for r in records(run)[n_before:] if r["world_size"] == 1)
    killed_at = max(r["step"] for r in records(run)[:n_before])
    events = log_events(ls.logs["A"], t_kill)
    marks: dict[str, float] = {}
    for label, pattern in BREAKDOWN:
        after = max(marks.values(), default=t_kill)
        hit = next((t for t, msg in events if t >= after - 0.001 and pattern.search(msg)), None)
        if hit is not None:
            marks[label] = hit
    took = t_back - t_kill
    print(f"  kill {i}: B SIGKILLed after step {killed_at}; a step at world size 1 after {took:.1f}s "
          f"(step {first['step']}, from the checkpoint of step {last_ckpt})", flush=True)
    prev = t_kill
    for label, t in marks.items():
        print(f"    +{t - t_kill:6.1f}s  {label} ({t - prev:.1f}s)", flush=True)
        prev = t
    print(f"    +{took:6.1f}s  first step at world size 1 logged ({t_back - prev:.1f}s)", flush=True)
    if restarts is not None:
        print(f"    B joined again before this kill: A restarted its worker group {restarts} time(s)", flush=True)
    return {"seconds": took, "marks": {k: v - t_kill for k, v in marks.items()}, "join_restarts": restarts}


def cold_start(ls: Launchers) -> float:
    """One launcher alone (PET_NNODES=1) on the same run dir: time to its first step."""
    port = free_port()
    n0 = len(records(ls.run_dir))
    t0 = time.time()
    proc = ls.start("cold", 0, "1", port)
    t1 = wait("the cold start's first step", lambda: len(records(ls.run_dir)) > n0, 300, [proc])
    proc.send_signal(signal.SIGTERM)  # checkpoints and exits 75
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
    return t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one kill")
    ap.add_argument("--kills", type=int, default=None, help="worker losses to measure (default 2, quick 1)")
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--keep", action="store_true", help="keep the run directory and logs")
    ap.add_argument("--rdzv-conf", default="", metavar="K=V,...",
                    help="WHAT-IF: extra c10d rendezvous settings (e.g. last_call_timeout=5); not what pods get")
    args = ap.parse_args()
    exit_on_sigterm()
    kills = args.kills or (1 if args.quick else 2)
    base = Path(tempfile.mkdtemp(prefix="kubetrain-bench-elastic-"))
    ls = Launchers(base, args.model, args.rdzv_conf)
    results = []
    try:
        t = time.monotonic()
        ls.start("A", 0, "1:2")
        ls.start("B", 1, "1:2")
        wait("training at world size 2", lambda: any(r["world_size"] == 2 for r in records(ls.run_dir)), 300,
             ls.alive())
        print(f"2 launchers training at world size 2 after {time.monotonic() - t:.1f}s", flush=True)
        for i in range(kills):
            results.append(kill_round(ls, i + 1))
        stop(ls.procs["A"], timeout=120)  # SIGTERM: checkpoint, exit 75
        cold = cold_start(ls)
        print(f"  cold start of one launcher to its first step: {cold:.1f}s", flush=True)
    finally:
        ls.stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    took = statistics.median(r["seconds"] for r in results)
    rows = [Row(f"worker lost -> step at world 1 (median of {len(results)})", took, cold, "<= 15 s", took <= 15,
                " s")]
    joins = [r["join_restarts"] for r in results if r["join_restarts"] is not None]
    if joins:
        rows.append(Row("scale-up (B joins again): survivor's worker-group restarts", max(joins), None, "<= 1",
                        max(joins) <= 1, ""))
    labels = [label for label, _ in BREAKDOWN]
    for label in labels:
        vals = [r["marks"][label] for r in results if label in r["marks"]]
        if vals:
            rows.append(Row(f"  after the kill: {label}", statistics.median(vals), None, "-", None, " s"))
    notes = [f"model {args.model}; c10d rendezvous on loopback as `kubetrain local`"
             + (f"; WHAT-IF PET_RDZV_CONF += {args.rdzv_conf}" if args.rdzv_conf else "")
             + (f"; logs in {base}" if args.keep else "")]
    print_table("elastic recovery (baseline: a cold start of one launcher from the same checkpoint)", rows, notes)


if __name__ == "__main__":
    main()
