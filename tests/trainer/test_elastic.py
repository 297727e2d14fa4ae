"""The pod's process, ``python -m kubetrain_trainer.launch``: exit codes and termination messages,
SIGTERM → checkpoint → exit 75 → resume, and elastic membership changes under torchrun's agent
with c10d rendezvous on loopback (two launchers = two pods, PET_NNODES=1:2)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kubetrain_trainer import checkpoint as ck

from .harness import free_port
from .procs import kill_tree, launcher_env, metrics, start_launcher, stop_all, train_here, wait_for, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(400)]

STOP_SAVE_SLEEP = 32  # longer than torchrun's fixed 30 s between SIGTERM and SIGKILL


def _spec(max_steps: int, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        "model": {"preset": "tiny", "seqLen": 32},
        "training": {"maxSteps": max_steps, "globalBatchSize": 4},
        "optimizer": {"lr": 3e-3},
        "checkpoint": {"intervalSteps": 5, "keep": 2, "saveTimeoutSeconds": 60},
        "elastic": {"collectiveTimeoutSeconds": 30},
    }
    spec.update(extra)
    return spec


def _termination(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _wait_exit(proc: subprocess.Popen[Any], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise


def test_exit_codes_and_termination_messages(tmp_path: Path) -> None:
    # Invalid spec: refused before any rendezvous or worker, exit 64.
    bad = write_job(tmp_path / "bad.json", {"workers": {"replicas": 3, "maxReplicas": 2}})
    env = launcher_env(bad, tmp_path / "bad-run", port=free_port())
    proc = start_launcher(env, tmp_path / "bad.log")
    assert _wait_exit(proc, 60) == 64
    record = _termination(Path(env["KUBETRAIN_TERMINATION_LOG"]))
    assert record["reason"] == "InvalidSpec" and "maxReplicas" in record["message"], record
    assert not (tmp_path / "bad-run").exists()

    # An entrypoint that cannot be imported: the worker's class (65) and message reach the pod's
    # termination log, and a permanent failure is not restarted (PET_MAX_RESTARTS is 3 here).
    spec = _spec(5, model={"entrypoint": "no_such_package_xyz.models:build"})
    job = write_job(tmp_path / "entry.json", spec)
    env = launcher_env(job, tmp_path / "entry-run", port=free_port())
    proc = start_launcher(env, tmp_path / "entry.log")
    assert _wait_exit(proc, 120) == 65, (tmp_path / "entry.log").read_text()[-3000:]
    record = _termination(Path(env["KUBETRAIN_TERMINATION_LOG"]))
    assert record["reason"] == "ModelError" and "cannot import module 'no_such_package_xyz.models'" in record["message"]
    log = (tmp_path / "entry.log").read_text()
    assert "not restarting the worker group" in log and log.count("failed (exitcode: 65)") == 1


def test_every_pod_reports_the_final_step_and_loss(tmp_path: Path) -> None:
    """Two pods that share no run dir (no claim: each has its own emptyDir) train to the end: the
    pod without rank 0 has no summary, and its termination record still carries the final step
    and loss (the operator reads whichever pod exits 0 first into status.progress)."""
    steps = 6
    job = write_job(tmp_path / "job.json", _spec(steps, workers={"replicas": 2}))
    port = free_port()
    envs = [launcher_env(job, tmp_path / name, nnodes="2", port=port, host=name == "a") for name in ("a", "b")]
    procs = [start_launcher(env, tmp_path / f"{name}.log") for env, name in zip(envs, ("a", "b"), strict=True)]
    try:
        for proc, name in zip(procs, ("a", "b"), strict=True):
            assert _wait_exit(proc, 240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        stop_all(procs)
    records = [_termination(Path(env["KUBETRAIN_TERMINATION_LOG"])) for env in envs]
    assert [(r["reason"], r["step"]) for r in records] == [("Succeeded", steps)] * 2, records
    assert isinstance(records[0]["loss"], float) and records[0]["loss"] == records[1]["loss"], records
    assert f"at step {steps}, final loss" in records[1]["message"], records[1]
    assert (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "b" / "summary.json").exists()


def test_elastic_scale_up_node_loss_preemption_and_resume(tmp_path: Path) -> None:
    """One pod trains alone (world 1); a second joins: the running worker checkpoints at the change
    (the save takes longer than torchrun's 30 s kill and still commits) and training continues at
    world 2 with no step lost or repeated.  The second pod is lost (SIGKILL of its launcher and
    worker): training continues at world 1 from the last checkpoint within a bounded time.  SIGTERM
    then stops the job with exit 75 after a committed checkpoint, and the next run resumes from it."""
    job = write_job(tmp_path / "job.json", _spec(100_000))
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    port = free_port()
    faults = {"KUBETRAIN_FAULT_STEP_SLEEP_SECONDS": "0.05", "KUBETRAIN_FAULT_STOP_SAVE_SLEEP_SECONDS": str(STOP_SAVE_SLEEP)}
    env_a = launcher_env(job, run_dir, nnodes="1:2", port=port, host=True, extra=faults)
    env_b = launcher_env(job, run_dir, nnodes="1:2", port=port, host=False, extra=faults)
    a = start_launcher(env_a, tmp_path / "a.log")
    procs = [a]
    try:
        def world(n: int, count: int) -> bool:
            return sum(r["world_size"] == n for r in metrics(run_dir)) >= count

        wait_for("3 steps at world 1", lambda: world(1, 3), 120, procs)
        b = start_launcher(env_b, tmp_path / "b.log")
        procs.append(b)
        joined = time.monotonic()
        took = wait_for("a step at world 2", lambda: world(2, 1), 180, procs)
        recs = metrics(run_dir)
        steps = [r["step"] for r in recs]
        assert steps == list(range(1, len(steps) + 1)), steps  # scale-up: nothing lost, nothing repeated
        last1 = max(r["step"] for r in recs if r["world_size"] == 1)
        a_log = (tmp_path / "a.log").read_text()
        assert f"checkpoints/step-{last1:08d} committed" in a_log
        print(f"\nscale-up 1 -> 2: a step at world 2 {time.monotonic() - joined:.1f}s after the second pod "
              f"started (includes the {STOP_SAVE_SLEEP}s injected save)")

        wait_for("a checkpoint at world 2", lambda: (ck.read_latest(root) or "") > f"step-{last1:08d}", 120, procs)
        committed = int((ck.read_latest(root) or "step-0").split("-")[1])
        kill_tree(b)
        procs.remove(b)
        n_before = len(metrics(run_dir))
        took = wait_for("a step at world 1 after the node loss",
                        lambda: any(r["world_size"] == 1 for r in metrics(run_dir)[n_before:]), 120, procs)
        # (how fast is bench/elastic_recovery.py's figure, not an assertion here)
        print(f"node loss 2 -> 1: training resumed at world 1 {took:.1f}s after the SIGKILL")
        after = [r for r in metrics(run_dir)[n_before:] if r["world_size"] == 1]
        latest_before_kill = committed
        assert after[0]["step"] >= latest_before_kill + 1  # from a committed checkpoint, none older

        wait_for("3 more steps", lambda: len(metrics(run_dir)) >= n_before + 4, 60, procs)
        a.send_signal(signal.SIGTERM)
        assert _wait_exit(a, 120) == 75, (tmp_path / "a.log").read_text()[-4000:]
        procs.remove(a)
    finally:
        stop_all(procs)
    record = _termination(Path(env_a["KUBETRAIN_TERMINATION_LOG"]))
    stopped = metrics(run_dir)[-1]["step"]
    assert record == {"reason": "Preempted", "message": f"stopped after a committed checkpoint at step {stopped}",
                      "step": stopped}
    assert ck.read_latest(root) == f"step-{stopped:08d}"

    # The next run resumes right after the preemption checkpoint: nothing lost, nothing repeated
    # (one rank, in this process: the launcher's success path is tests/local's).
    train_here(write_job(tmp_path / "job2.json", _spec(stopped + 2)), run_dir)
    assert [r["step"] for r in metrics(run_dir)][-3:] == [stopped, stopped + 1, stopped + 2]
