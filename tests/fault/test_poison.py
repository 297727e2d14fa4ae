"""A NaN in the state is never committed: with intervalSteps 2 and keep 3, the checkpoints of
the steps before the poison stay, `latest` keeps naming the last finite one, and the run ends
with exit 65 NonFiniteState instead of a poisoned checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import ckpts, latest, run_local, spec, step_dirs, termination, verify, write_job

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]


def test_nan_state_is_never_committed_and_good_checkpoints_survive(tmp_path: Path) -> None:
    # Rank 0 writes a NaN into a parameter after step 9 (fault injection); every later step is
    # non-finite (skipped by the engine), so saves at 10, 12, 14 and the final one at 16 see it.
    body = spec(16, interval=2, keep=3, precision={"maxConsecutiveNonFinite": 50})
    job = write_job(tmp_path / "job.yaml", body)
    run = tmp_path / "run"
    got = run_local(job, run, extra_env={"KUBETRAIN_FAULT_NAN_PARAM_STEP": "9"})
    assert got.returncode == 65, got.stderr[-3000:]
    record = termination(run)
    assert record["reason"] == "NonFiniteState", record
    assert "not finite" in record["message"] and "step 8" in record["message"], record
    # keep 3: the newest three finite checkpoints are kept; nothing after the poison was committed.
    assert step_dirs(run) == ["step-00000004", "step-00000006", "step-00000008"]
    assert latest(run) == "step-00000008"
    assert verify(ckpts(run)).returncode == 0
    log = (run / "logs" / "worker-0.log").read_text()
    for step in (10, 12, 14):
        assert f"the state at step {step} is not finite" in log, log[-3000:]
