"""Fault-injection helpers: the real `kubetrain local` (launcher + 2 worker processes, gloo on
loopback) on a tiny model, faults caused for real where the kernel can cause them — a full or
read-only file system is a small tmpfs (mounted by the test, as root), an unreadable directory
is mode 000 seen by a process WITHOUT CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (`setpriv` drops them
from the bounding set: root then obeys file modes like anyone else) — and byte flips written
into checkpoint files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
          "-dac_override,-dac_read_search", "--"]


def spec(max_steps: int, interval: int = 2, keep: int = 3, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workers": {"replicas": 1, "procsPerWorker": 2},
        "model": {"preset": "tiny", "seqLen": 32},
        "training": {"maxSteps": max_steps, "globalBatchSize": 8, "microBatchSize": 4},
        "optimizer": {"lr": 0.003},
        "checkpoint": {"intervalSteps": interval, "keep": keep},
    }
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def write_job(path: Path, body: dict[str, Any], name: str = "ft") -> Path:
    job = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job))
    return path


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_FAULT_")}
    out.update(OMP_NUM_THREADS="1", KUBETRAIN_DEVICE="cpu", PYTHONUNBUFFERED="1")
    out.update(extra or {})
    return out


def local_argv(job: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "kubetrain", "local", str(job), "--run-dir", str(run_dir), "-q"]


def run_local(job: Path, run_dir: Path, *, extra_env: dict[str, str] | None = None, prefix: list[str] = (),
              timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *local_argv(job, run_dir)], cwd=REPO, env=env(extra_env), text=True,
                          capture_output=True, timeout=timeout)


def start_local(job: Path, run_dir: Path, *, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(local_argv(job, run_dir), cwd=REPO, env=env(extra_env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def termination(run_dir: Path, index: int = 0) -> dict[str, Any]:
    return dict(json.loads((run_dir / "logs" / f"termination-{index}.json").read_text()))


def losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if "loss" in rec:
                out[int(rec["step"])] = float(rec["loss"])  # a resumed run's steps replace earlier ones
    return out


def ckpts(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest(run_dir: Path) -> str:
    return (ckpts(run_dir) / "latest").read_text().strip()


def step_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpts(run_dir).iterdir() if p.is_dir())


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Invert one byte in the middle (by default) of ``path``: size unchanged, content damaged."""
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> sha256 (what "nothing overwritten" compares)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetrain", "checkpoint", "verify", str(path)], cwd=REPO,
                          env=env(), text=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small file system at ``path`` (needs root); unmounted (lazily if busy) afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


# --------------------------------------------------------------------------------- processes


def processes_of(run_dir: Path) -> list[int]:
    """PIDs of processes (launchers, workers) whose environment names this run directory."""
    needle = f"KUBETRAIN_RUN_DIR={run_dir.resolve()}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                out.append(int(entry.name))
    return out


def launch_dirs_of(pids: list[int]) -> set[Path]:
    dirs = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"KUBETRAIN_LAUNCH_DIR="):
                    dirs.add(Path(item.split(b"=", 1)[1].decode()))
    return dirs


def wait_for(what: str, cond: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"kubetrain local exited {proc.returncode} waiting for {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def gone_within(run_dir: Path, seconds: float) -> tuple[bool, float, list[int]]:
    """Whether every process of the run is gone within ``seconds``; (ok, time taken, what is left)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        left = processes_of(run_dir)
        if not left:
            return True, time.monotonic() - start, []
        time.sleep(0.1)
    return False, seconds, processes_of(run_dir)


def kill_all(run_dir: Path) -> None:
    """Test cleanup: whatever of this run is left (only this run's processes)."""
    for pid in processes_of(run_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".kubetrain.lock*"))
    return dst
