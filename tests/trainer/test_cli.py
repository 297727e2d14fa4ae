"""The real entry point: ``torchrun ... -m kubetrain_trainer --spec FILE`` trains the tiny GPT on the
synthetic corpus far below the uniform-entropy line and writes the metrics log; failures map to
DESIGN.md's exit codes with a termination message."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import run_processes, torchrun

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

LOG_FIELDS = {
    "step", "loss", "lr", "grad_norm", "loss_scale", "skipped_steps", "tokens_per_s", "mfu",
    "step_time", "data_time", "peak_mem", "world_size",
}


def test_torchrun_loss_falls_far_below_uniform(tmp_path: Path) -> None:
    job = {
        "apiVersion": "kubetrain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"preset": "tiny"},
            "training": {"maxSteps": 150, "globalBatchSize": 16, "evalEvery": 75, "evalBatches": 2, "logEvery": 5},
            "parallelism": {"strategy": "zero2"},
            "optimizer": {"type": "AdamW", "lr": 0.01},
            "lrSchedule": {"type": "WarmupCosineLR", "params": {"total_num_steps": 150, "warmup_num_steps": 10}},
        },
    }
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    proc = torchrun(spec, 2, run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 151, 5))
    assert all(set(r) >= LOG_FIELDS for r in records)
    assert all(r["world_size"] == 2 and r["mfu"] is None and r["tokens_per_s"] > 0 for r in records)
    uniform = math.log(256)
    assert records[0]["loss"] > 0.7 * uniform
    assert records[-1]["loss"] < 0.4 * uniform, [r["loss"] for r in records]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < 0.4 * uniform
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["world_size"] == 2 and summary["skipped_steps"] == 0


def _run_cli(tmp_path: Path, spec: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, str, Path]:
    """One process without torchrun (a 1-process group), spec passed through $KUBETRAIN_SPEC."""
    term = tmp_path / "termination-log"
    run_env = {"KUBETRAIN_SPEC": json.dumps(spec), "KUBETRAIN_TERMINATION_LOG": str(term),
               "KUBETRAIN_RUN_DIR": str(tmp_path / "run")} | (env or {})
    argv = [__import__("sys").executable, "-m", "kubetrain_trainer"]
    codes, logs = run_processes(argv, 1, tmp_path / "logs", timeout=120, env=run_env, expect_ok=False)
    assert codes[0] is not None
    return codes[0], logs[0], term


@pytest.mark.parametrize(
    ("spec", "env", "exit_code", "reason", "needle"),
    [
        ({"model": {"entrypoint": "no_such_pkg.models:build"}}, {}, 65, "ModelError", "cannot import module"),
        ({"precision": {"dtype": "fp8"}}, {}, 64, "InvalidSpec", "precision.dtype fp8 needs"),
        ({"parallelism": {"strategy": "zero9"}}, {}, 64, "InvalidSpec", "strategy"),
        (
            {"training": {"maxSteps": 20, "globalBatchSize": 4}, "precision": {"maxConsecutiveNonFinite": 2}},
            {"KUBETRAIN_FAULT_NAN_LOSS_STEPS": "3,4,5"}, 65, "NonFiniteLoss", "not finite for 2 consecutive steps",
        ),
    ],
)
def test_cli_failure_exit_codes(
    tmp_path: Path, spec: dict[str, Any], env: dict[str, str], exit_code: int, reason: str, needle: str
) -> None:
    rc, log, term = _run_cli(tmp_path, spec, env)
    assert rc == exit_code, log[-3000:]
    record = json.loads(term.read_text())
    assert record["reason"] == reason and needle in record["message"]
    assert json.loads((tmp_path / "run" / "failures" / "rank0.json").read_text()) == record
    assert "Traceback" not in log  # expected failures are one readable line, not a stack trace
