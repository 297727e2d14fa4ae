"""Launch real multi-process trainer runs on CPU (gloo, 127.0.0.1) for the trainer tests.

``launch(target, world, payload)`` starts ``world`` processes of ``python -m tests.trainer.worker``
(or any module) with torchrun's environment variables set, waits for all of them, and returns each
rank's JSON result.  A port clash (rare race between picking and binding a free port) is retried.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "operator"), str(REPO / "trainer_image")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        OMP_NUM_THREADS="1",  # 2 shared cores: more threads per rank only thrash
        KUBETRAIN_METRICS_PORT="0",
        KUBETRAIN_DEVICE="cpu",
        PYTHONUNBUFFERED="1",
    )
    for key in list(env):
        if key.startswith("KUBETRAIN_FAULT_"):
            del env[key]
    env.update(extra or {})
    return env


class LaunchError(AssertionError):
    def __init__(self, message: str, returncodes: list[int | None], logs: list[str]) -> None:
        super().__init__(message)
        self.returncodes = returncodes
        self.logs = logs


def run_processes(
    argv: list[str], world: int, workdir: Path, *, timeout: float, env: dict[str, str] | None = None,
    expect_ok: bool = True,
) -> tuple[list[int | None], list[str]]:
    """Run ``world`` copies of argv as ranks 0..world-1; returns (returncodes, combined logs)."""
    for attempt in range(3):
        port = free_port()
        procs, logs = [], []
        workdir.mkdir(parents=True, exist_ok=True)
        for rank in range(world):
            log_path = workdir / f"rank{rank}.log"
            logs.append(log_path)
            rank_env = base_env(env) | {
                "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "GROUP_RANK": "0",
            }
            with log_path.open("w") as out:
                procs.append(subprocess.Popen(argv, cwd=REPO, env=rank_env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        texts = [lp.read_text(errors="replace") for lp in logs]
        if any("Address already in use" in t or "EADDRINUSE" in t for t in texts) and attempt < 2:
            continue
        if expect_ok and codes != [0] * world:
            tails = "\n".join(f"--- rank {r} (rc={c}) ---\n{t[-4000:]}" for r, (c, t) in enumerate(zip(codes, texts, strict=True)))
            raise LaunchError(f"ranks exited with {codes}\n{tails}", codes, texts)
        return codes, texts
    raise AssertionError("unreachable")


def launch(target: str, world: int, payload: dict[str, Any], workdir: Path, *, timeout: float = 240,
           env: dict[str, str] | None = None) -> list[Any]:
    """Run ``tests.trainer.worker.<target>(payload)`` on ``world`` ranks; returns each rank's result."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "payload.json").write_text(json.dumps(payload))
    argv = [PYTHON, "-m", "tests.trainer.worker", target, str(workdir)]
    run_processes(argv, world, workdir, timeout=timeout, env=env)
    return [json.loads((workdir / f"result{r}.json").read_text()) for r in range(world)]


def torchrun(spec_file: Path, nproc: int, run_dir: Path, *, timeout: float = 240,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point under torchrun (standalone rendezvous on a free port)."""
    argv = [
        PYTHON, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=0",
        "-m", "kubetrain_trainer", "--spec", str(spec_file), "--run-dir", str(run_dir),
    ]
    return subprocess.run(argv, cwd=REPO, env=base_env(env), capture_output=True, text=True, timeout=timeout)
