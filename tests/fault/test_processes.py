"""`kubetrain local` owns its processes: killing it (SIGKILL of it, of its process group), hanging up
its terminal, or killing a launcher alone leaves no trainer process behind within 5 s and no
launch directory (the orphaned launcher gives its workers launch.ORPHAN_STOP_SECONDS = 3 s to
checkpoint, then kills them); a second `kubetrain local` on a run directory in use is refused at once with the
holder's PID.  Processes are found by their environment (KUBETRAIN_RUN_DIR = this test's run
directory), so nothing else on the machine is touched."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .helpers import (
    gone_within,
    kill_all,
    launch_dirs_of,
    losses,
    processes_of,
    run_local,
    spec,
    start_local,
    verify,
    wait_for,
    write_job,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(400)]

SLOW_STEPS = {"KUBETRAIN_FAULT_STEP_SLEEP_SECONDS": "0.3"}  # a long, gentle run to act on


def _training(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, list[int]]:
    job = write_job(tmp_path / "job.yaml", spec(100_000, interval=0))
    run = tmp_path / "run"
    proc = start_local(job, run, extra_env=SLOW_STEPS)
    wait_for("two training steps", lambda: len(losses(run)) >= 2, 240, proc)
    pids = processes_of(run)
    assert len(pids) >= 3, pids  # the launcher and two workers
    return proc, run, pids


@pytest.mark.parametrize("how", ["sigkill", "sigkill-group", "sighup"])
def test_killing_kubetrain_local_leaves_no_trainer_process(tmp_path: Path, how: str) -> None:
    proc, run, pids = _training(tmp_path)
    launch_dirs = launch_dirs_of(pids)
    assert launch_dirs and all(d.exists() for d in launch_dirs)
    try:
        if how == "sigkill":
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "sigkill-group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # the terminal closed
            os.kill(proc.pid, signal.SIGHUP)
        ok, _took, left = gone_within(run, 5.0)
        assert ok, f"{how}: trainer processes {left} still alive after 5 s"
        proc.wait(timeout=30)
        assert not [d for d in launch_dirs if d.exists()], f"{how}: launch directory left behind"
        # The workers had ORPHAN_STOP_SECONDS to checkpoint: whether they made it depends on the
        # machine's load, but what is committed is whole (a save cut short never becomes latest).
        if (run / "checkpoints" / "latest").exists():
            assert verify(run).returncode == 0, verify(run).stdout
    finally:
        kill_all(run)
        if proc.poll() is None:
            proc.kill()


def test_killing_the_launcher_takes_its_workers(tmp_path: Path) -> None:
    proc, run, _pids = _training(tmp_path)
    launcher = proc_children(proc.pid)
    try:
        assert len(launcher) == 1, launcher
        os.kill(launcher[0], signal.SIGKILL)
        ok, _took, left = gone_within(run, 5.0)
        assert ok, f"workers {left} outlived their launcher"
        proc.wait(timeout=60)
        assert proc.returncode != 0
    finally:
        kill_all(run)
        if proc.poll() is None:
            proc.kill()


def test_second_run_on_a_locked_run_dir_is_refused_with_the_pid(tmp_path: Path) -> None:
    proc, run, _pids = _training(tmp_path)
    try:
        second = run_local(tmp_path / "job.yaml", run, timeout=60)
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"run directory {run} is in use by another run (pid {proc.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert len(processes_of(run)) == len(_pids), "the refused run started processes"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: checkpoint and stop
        try:
            proc.communicate(timeout=120)
        finally:
            kill_all(run)
    assert proc.returncode == 130


def proc_children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out
