"""Helpers for the resilience tests: the real trainer CLI and the real launcher as processes that a
test can watch, signal and kill while they run (``harness.run_processes`` waits for the end)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import PYTHON, REPO, base_env, free_port, run_processes

TRAINER = [PYTHON, "-m", "kubetrain_trainer"]
LAUNCHER = [PYTHON, "-m", "kubetrain_trainer.launch"]


def write_job(path: Path, spec: dict[str, Any], name: str = "job") -> Path:
    job = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=1))
    return path


def run_trainer(spec_file: Path, world: int, run_dir: Path, *, env: dict[str, str] | None = None,
                expect_ok: bool = True, timeout: float = 200) -> tuple[list[int | None], list[str]]:
    """``python -m kubetrain_trainer`` on ``world`` ranks (torchrun's environment, no agent)."""
    logs = run_dir.parent / f"logs-{run_dir.name}-{time.monotonic_ns()}"
    argv = [*TRAINER, "--spec", str(spec_file), "--run-dir", str(run_dir)]
    return run_processes(argv, world, logs, timeout=timeout, env=env, expect_ok=expect_ok)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "loss" in rec:
            out.append(rec)
    return out


def wait_for(what: str, cond: Callable[[], bool], timeout: float, procs: list[subprocess.Popen[Any]] = ()) -> float:
    """Poll ``cond`` until true; returns the time it took.  Fails early when a process died."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        for p in procs:
            if p.poll() is not None and not cond():
                raise AssertionError(f"process {p.args} exited {p.returncode} while waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def start_ranks(argv: list[str], world: int, logdir: Path, env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
    """``world`` ranks of ``argv`` with torchrun's environment, not waited for."""
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world):
        rank_env = base_env(env) | {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GROUP_RANK": "0",
        }
        with (logdir / f"rank{rank}.log").open("w") as out:
            procs.append(subprocess.Popen(argv, cwd=REPO, env=rank_env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


def launcher_env(spec_file: Path, run_dir: Path, *, nnodes: str = "1", nproc: int = 1, port: int,
                 host: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the operator puts in a worker pod, on loopback (as ``kubetrain local`` does)."""
    return base_env({
        "PET_NNODES": nnodes,
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "PET_RDZV_ID": "test",
        "PET_MAX_RESTARTS": "3",
        "PET_LOCAL_ADDR": "127.0.0.1",
        "PET_MONITOR_INTERVAL": "0.5",
        "PET_RDZV_CONF": f"is_host={'true' if host else 'false'},last_call_timeout=2",
        "KUBETRAIN_SPEC_FILE": str(spec_file),
        "KUBETRAIN_RUN_DIR": str(run_dir),
        "KUBETRAIN_TERMINATION_LOG": str(run_dir.parent / f"termination-{run_dir.name}-{'host' if host else 'peer'}.json"),
    } | (extra or {}))


def start_launcher(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen(LAUNCHER, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the launcher's workers: torch starts each in its own session)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a launcher and every process below it (a lost pod)."""
    todo, seen = [proc.pid], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += children(pid)
    for pid in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop_all(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        if p.poll() is None:
            kill_tree(p)


def train_here(job_file: Path, run_dir: Path) -> list[dict[str, Any]]:
    """Train one rank in THIS process (a 1-process gloo group), wired as the CLI wires it: restore,
    fit with the checkpoint callback, close.  No process start-up: for single-rank steps of a test."""
    import torch.distributed as dist

    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.checkpoint import Checkpointer
    from kubetrain_trainer.engine import Trainer

    cfg = config.from_spec(json.loads(job_file.read_text()), world_size=1)
    ctx = distributed.init(0, 60)
    trainer = None
    try:
        trainer = Trainer(cfg, ctx, run_dir, keep_history=False)
        checkpointer = Checkpointer(trainer, run_dir / "checkpoints")
        trainer.callbacks.append(checkpointer.on_step)
        checkpointer.restore()
        trainer.fit()
        checkpointer.close()
    finally:
        if trainer is not None:
            trainer.close()
        dist.destroy_process_group()
    return metrics(run_dir)
