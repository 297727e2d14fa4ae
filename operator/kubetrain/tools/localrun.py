"""`kubetrain local`: train a TrainingJob on this machine with the pods' own launcher.

Each simulated worker is one `python -m kubetrain_trainer.launch` process with the
environment contract the operator gives a pod (PET_* for torchrun's agent, rendezvous on
loopback), so what works here works in the cluster. Progress comes from the run's
metrics log; Ctrl-C asks the launchers to checkpoint (SIGTERM, exit 75) and the same
command later resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubetrain.api import TrainingJob
from kubetrain.api.constants import (
    ENV_CHECKPOINT_DIR,
    ENV_LOCAL_PID,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_RUN_DIR,
    ENV_RUN_LOCK_ID,
    ENV_SPEC_FILE,
    ENV_TERMINATION_LOG,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    RENDEZVOUS_CONF,
)


@dataclass
class LocalOptions:
    spec_path: Path
    workers: int
    procs_per_worker: int
    run_dir: Path
    quiet: bool = False
    # Runs in each launcher before exec (cli/local.py: die with this process, PR_SET_PDEATHSIG).
    preexec: Callable[[], None] | None = None
    # Who may share the run directory's lock with us: our launchers (cli/local.py holds it).
    lock_id: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while picking, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def launcher_env(job: TrainingJob, opts: LocalOptions, index: int, port: int, metrics_port: int = 0) -> dict[str, str]:
    """The same variables the operator sets in a worker pod, pointed at loopback (``metrics_port``:
    where this worker serves /metrics and /progress on 127.0.0.1; 0: not at all)."""
    name = str(job.metadata.get("name") or "job")
    env = dict(os.environ)
    env.update({
        "PET_NNODES": str(opts.workers),
        "PET_NPROC_PER_NODE": str(opts.procs_per_worker),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "PET_RDZV_ID": f"local-{name}",
        "PET_MAX_RESTARTS": "0",
        "PET_LOCAL_ADDR": "127.0.0.1",
        # only the first simulated pod's host creates the rendezvous store
        "PET_RDZV_CONF": ",".join([f"is_host={'true' if index == 0 else 'false'}",
                                   *(f"{k}={v}" for k, v in RENDEZVOUS_CONF.items())]),
        ENV_SPEC_FILE: str(opts.spec_path.resolve()),
        ENV_RUN_DIR: str(opts.run_dir.resolve()),
        ENV_CHECKPOINT_DIR: str((opts.run_dir / "checkpoints").resolve()),
        ENV_METRICS_PORT: str(metrics_port),
        ENV_METRICS_HOST: "127.0.0.1",
        ENV_TERMINATION_LOG: str((opts.run_dir / "logs" / f"termination-{index}.json").resolve()),
        "PYTHONUNBUFFERED": "1",
        ENV_LOCAL_PID: str(os.getpid()),  # the launcher stops when this process is gone
    })
    if opts.lock_id:
        env[ENV_RUN_LOCK_ID] = opts.lock_id
    return env


TARGETS_FILE = "prometheus-targets.json"


def build_scrape_targets(job: TrainingJob, ports: list[int]) -> list[dict[str, Any]]:
    """Prometheus file_sd targets of a local run's workers: one group per worker, labelled like a
    pod scrape (namespace; the trainer labels its series with trainingjob itself)."""
    namespace = str(job.metadata.get("namespace") or "default")
    return [{"targets": [f"127.0.0.1:{p}"], "labels": {"namespace": namespace, "pod": f"local-worker-{i}"}}
            for i, p in enumerate(ports)]


# -------------------------------------------------------------------------------- progress


@dataclass
class RunProgress:
    max_steps: int
    records: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_step_seen: int | None = None

    def add(self, rec: dict[str, Any]) -> None:
        if "step" not in rec or "loss" not in rec:
            return
        if self.first_step_seen is None:
            self.first_step_seen = int(rec["step"])
        self.records.append(rec)

    @property
    def step(self) -> int:
        return int(self.records[-1]["step"]) if self.records else 0

    def eta_seconds(self) -> float | None:
        if len(self.records) < 2 or self.first_step_seen is None:
            return None
        done = self.step - self.first_step_seen
        if done <= 0:
            return None
        per_step = (time.monotonic() - self.started) / (done + 1)
        return per_step * max(0, self.max_steps - self.step)

    def line(self, width: int = 24) -> str:
        if not self.records:
            return f"starting... {_duration(time.monotonic() - self.started)}"
        rec = self.records[-1]
        frac = min(1.0, self.step / max(1, self.max_steps))
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = self.eta_seconds()
        return (
            f"step {self.step}/{self.max_steps} [{bar}] loss {rec['loss']:.4f} lr {rec.get('lr', 0):.3g} "
            f"{_rate(rec.get('tokens_per_s'))} tok/s ETA {_duration(eta) if eta is not None else '?'}"
        )


def _rate(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class MetricsTail:
    """Reads lines appended to metrics.jsonl since the run started (a resumed run appends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = ""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        text = self.partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


# ------------------------------------------------------------------------------- summary


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "step" in rec and "loss" in rec:
            out.append(rec)
    return out


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The committed checkpoint the trainer's `latest` pointer names, if any (None also when the
    checkpoint directory cannot be read: the failure message says why)."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    try:
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if target.exists():
                return target
        if pointer.is_symlink() or pointer.is_dir():
            return pointer.resolve()
    except OSError:
        return None
    return None


def summary_lines(run_dir: Path, wall: float, progress: RunProgress) -> list[str]:
    history = read_history(run_dir)
    rates = [r["tokens_per_s"] for r in progress.records if isinstance(r.get("tokens_per_s"), (int, float))]
    lines = [f"run directory   {run_dir}"]
    if history:
        lines += [
            f"steps           {history[-1]['step']} / {progress.max_steps}"
            + (f" (this run: {progress.first_step_seen}-{progress.step})" if progress.records else ""),
            f"loss            {history[0]['loss']:.4f} (step {history[0]['step']}) -> "
            f"{history[-1]['loss']:.4f} (step {history[-1]['step']})",
        ]
    if rates:
        lines.append(f"tokens/s        {sum(rates) / len(rates):,.0f} (mean over this run)")
    lines.append(f"wall time       {_duration(wall)}")
    ckpt = latest_checkpoint(run_dir)
    lines.append(f"checkpoint      {ckpt if ckpt else '(none committed)'}")
    lines.append(f"metrics log     {run_dir / 'metrics.jsonl'}")
    return lines


# --------------------------------------------------------------------------------- running


class LocalRun:
    def __init__(self, job: TrainingJob, opts: LocalOptions, out: IO[str] = sys.stderr) -> None:
        self.job, self.opts, self.out = job, opts, out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.interrupted = 0
        self.progress = RunProgress(max_steps=job.spec.training.max_steps)
        self.tty = out.isatty()

    def start(self) -> None:
        logs = self.opts.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        metrics_ports = free_ports(self.opts.workers)
        # Where a Prometheus finds the workers (file_sd_configs; docs/observability.md).
        targets = self.opts.run_dir / TARGETS_FILE
        targets.with_suffix(".tmp").write_text(json.dumps(build_scrape_targets(self.job, metrics_ports), indent=1))
        targets.with_suffix(".tmp").replace(targets)
        for i in range(self.opts.workers):
            log_file = (logs / f"worker-{i}.log").open("ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "kubetrain_trainer.launch"],
                env=launcher_env(self.job, self.opts, i, port, metrics_ports[i]),
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we decide what the workers get
                preexec_fn=self.opts.preexec,  # and they die with us (SIGKILL of us or our group)
            ))
            log_file.close()

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        self.interrupted += 1
        sig = signal.SIGTERM if self.interrupted == 1 else signal.SIGKILL
        if self.interrupted == 1:
            self._say("\ninterrupted: checkpointing and stopping (Ctrl-C again to kill)")
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)

    def _on_hangup(self, signum: int, _frame: Any) -> None:
        """The terminal went away: nobody is watching. Ask the launchers to stop (they checkpoint
        if they can within a few seconds) and leave at once; the launchers, orphaned, bound their
        stop (launch.ORPHAN_STOP_SECONDS)."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        os._exit(128 + signum)

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def wait(self) -> int:
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigint)
        signal.signal(signal.SIGHUP, self._on_hangup)
        tail = MetricsTail(self.opts.run_dir / "metrics.jsonl")
        last_print = 0.0
        try:
            while any(p.poll() is None for p in self.procs):
                for rec in tail.read():
                    self.progress.add(rec)
                now = time.monotonic()
                if self.opts.quiet:
                    pass
                elif self.tty:  # one line, redrawn in place
                    print(f"\r{self.progress.line()}\x1b[K", end="", file=self.out, flush=True)
                elif now - last_print > 10:  # a log file or a pipe: a line every 10 s
                    self._say(self.progress.line())
                    last_print = now
                time.sleep(0.3)
            for rec in tail.read():
                self.progress.add(rec)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if self.tty and not self.opts.quiet:
            print(f"\r{self.progress.line()}\x1b[K", file=self.out, flush=True)
        codes = [p.returncode for p in self.procs]
        return self._exit_code(codes)

    def _exit_code(self, codes: list[int]) -> int:
        bad = [c for c in codes if c != 0]
        if not bad:
            return 0
        if self.interrupted and all(c == EXIT_PREEMPTED for c in bad):
            return EXIT_INTERRUPTED
        for wanted in (64, 65):
            if wanted in bad:
                return wanted
        return EXIT_PREEMPTED if all(c == EXIT_PREEMPTED for c in bad) else bad[0]

    def termination_messages(self) -> list[str]:
        out = []
        for i in range(self.opts.workers):
            path = self.opts.run_dir / "logs" / f"termination-{i}.json"
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("reason") not in (None, "Succeeded"):
                out.append(f"worker {i}: {rec.get('reason')}: {rec.get('message')}")
        return out

    def log_tail(self, lines: int = 25) -> str:
        path = self.opts.run_dir / "logs" / "worker-0.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
