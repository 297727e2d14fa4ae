"""`kubetrain schedule`: the lr of every optimizer step, against DeepSpeed's formulas.

Expected values are computed here by hand from deepspeed/runtime/lr_schedules.py (0.19.6),
with DESIGN.md's step numbering: step 0 runs with the lr the scheduler's constructor set
(`get_lr()` at last_batch_iteration = -1), step k >= 1 with `get_lr()` at k - 1.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetrain", *args], capture_output=True, text=True, timeout=120)


def _write(tmp_path: Path, spec: dict[str, Any], name: str = "job.yaml") -> Path:
    f = tmp_path / name
    if "deepspeed" in spec and "train_batch_size" not in spec["deepspeed"]:
        # DeepSpeed needs a batch size (kubetrain.api.deepspeed refuses a config without any, as DeepSpeed does)
        spec = {**spec, "training": {"globalBatchSize": 8, **spec.get("training", {})}}
    doc = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "lr"}, "spec": spec}
    f.write_text(yaml.safe_dump(doc))
    return f


def _lrs(tmp_path: Path, deepspeed: dict[str, Any], steps: int, **spec: Any) -> list[float]:
    f = _write(tmp_path, {"training": {"maxSteps": 1000}, **spec, "deepspeed": deepspeed})
    result = _cli("schedule", str(f), "--steps", str(steps), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    values = json.loads(result.stdout)
    assert isinstance(values, list) and len(values) == steps
    assert all(isinstance(v, float) for v in values)
    return values


def _warmup_lr(k: int, lo: float, hi: float, n: int, kind: str = "log") -> float:
    """DeepSpeed WarmupLR.get_lr() at last_batch_iteration = k - 1 (k = 0: the constructor's lr)."""
    if k == 0:
        return lo
    i = k - 1
    n = max(2, n)
    if i < n:
        gamma = (1.0 / math.log(n)) * math.log(i + 1) if kind == "log" else i / n
    else:
        gamma = 1.0
    return lo + (hi - lo) * gamma


def test_warmup_lr(tmp_path: Path) -> None:
    ds = {"optimizer": {"type": "Adam", "params": {"lr": 0.01}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.001, "warmup_max_lr": 0.01,
                                                       "warmup_num_steps": 10}}}
    got = _lrs(tmp_path, ds, 14)
    # log warmup (DeepSpeed's default): 0.001 at steps 0 and 1, log(k)/log(10) of the way at step k.
    assert got[0] == got[1] == 0.001
    assert got[2] == pytest.approx(0.001 + 0.009 * math.log(2) / math.log(10), rel=1e-12)
    assert got == pytest.approx([_warmup_lr(k, 0.001, 0.01, 10) for k in range(14)], rel=1e-12)
    # flat at warmup_max_lr afterwards (0.001 + (0.01 - 0.001) * 1.0, as DeepSpeed computes it)
    assert got[11:] == [0.001 + (0.01 - 0.001) * 1.0] * 3


def test_warmup_lr_max_defaults_to_optimizer_lr(tmp_path: Path) -> None:
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 0.004}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_type": "linear"}}}
    assert _lrs(tmp_path, ds, 7) == pytest.approx([0.0, 0.0, 0.001, 0.002, 0.003, 0.004, 0.004], rel=1e-12)


def test_warmup_decay_lr(tmp_path: Path) -> None:
    ds = {"optimizer": {"type": "Adam", "params": {"lr": 0.001}},
          "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 20, "warmup_num_steps": 5,
                                                            "warmup_max_lr": 0.001, "warmup_type": "linear"}}}
    got = _lrs(tmp_path, ds, 24)

    def expected(k: int) -> float:
        if k == 0:
            return 0.0
        i = k - 1
        gamma = i / 5 if i < 5 else max(0.0, float(20 - i) / float(max(1.0, 20 - 5)))
        return 0.0 + 0.001 * gamma

    assert got[:7] == pytest.approx([0.0, 0.0, 0.0002, 0.0004, 0.0006, 0.0008, 0.001], rel=1e-12)
    assert got == pytest.approx([expected(k) for k in range(24)], rel=1e-12, abs=1e-18)
    assert got[21:] == [0.0, 0.0, 0.0]  # i = 20 .. 22: total_num_steps reached, clamped at 0


def test_warmup_cosine_lr(tmp_path: Path) -> None:
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 0.002}},
          "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 20, "warmup_num_steps": 4,
                                                             "warmup_type": "linear", "warmup_min_ratio": 0.1,
                                                             "cos_min_ratio": 0.01}}}
    got = _lrs(tmp_path, ds, 24)

    def expected(k: int) -> float:
        if k == 0:
            return 0.0  # DeepSpeed's WarmupCosineLR sets lr 0 in its constructor
        i = k - 1
        if i < 4:
            ratio = 0.1 + (i / 4) * (1.0 - 0.1)
        else:
            progress = min(1.0, (i - 4 + 1) / max(1, 20 - 4))
            ratio = max(0.0, 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * progress)) / 2)
        return 0.002 * ratio

    assert got[:5] == pytest.approx([0.0, 0.0002, 0.00065, 0.0011, 0.00155], rel=1e-12)
    assert got == pytest.approx([expected(k) for k in range(24)], rel=1e-12)
    assert got[-1] == pytest.approx(0.002 * 0.01, rel=1e-12)  # past total_num_steps: cos_min_ratio


def test_one_cycle(tmp_path: Path) -> None:
    ds = {"optimizer": {"type": "Adam", "params": {"lr": 0.01}},
          "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.001, "cycle_max_lr": 0.01,
                                                       "cycle_first_step_size": 4, "decay_step_size": 2,
                                                       "decay_lr_rate": 0.5, "cycle_momentum": False}}}
    got = _lrs(tmp_path, ds, 14)

    def expected(k: int) -> float:
        if k == 0:
            return 0.001
        i = k - 1
        if i < 8:  # total_size = 4 + 4
            batch = i + 1
            x = 1.0 + batch / 8 - math.floor(1 + batch / 8)
            scale = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
            return 0.001 + (0.01 - 0.001) * scale
        return 0.001 / (1 + 0.5 * ((i - 8 + 1) / 2))

    # up over 4 steps, down over 4, then 1 / (1 + rate * interval) decay
    assert got[:10] == pytest.approx([0.001, 0.00325, 0.0055, 0.00775, 0.01, 0.00775, 0.0055, 0.00325, 0.001,
                                      0.001 / 1.25], rel=1e-12)
    assert got == pytest.approx([expected(k) for k in range(14)], rel=1e-12)


@pytest.mark.parametrize("staircase", [False, True])
def test_lr_range_test(tmp_path: Path, staircase: bool) -> None:
    ds = {"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
          "scheduler": {"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.001,
                                                          "lr_range_test_step_size": 5,
                                                          "lr_range_test_step_rate": 2.0,
                                                          "lr_range_test_staircase": staircase}}}
    got = _lrs(tmp_path, ds, 12)

    def expected(k: int) -> float:
        interval = float(k) / 5  # (last_batch_iteration + 1) / step_size with last_batch_iteration = k - 1
        if staircase:
            interval = math.floor(interval)
        return 0.001 * (1 + 2.0 * interval)

    assert got[0] == 0.001
    assert got == pytest.approx([expected(k) for k in range(12)], rel=1e-12)
    if staircase:
        assert got[4] == 0.001 and got[5] == pytest.approx(0.003, rel=1e-12)


def test_constant_default_and_steps_default_to_max_steps(tmp_path: Path) -> None:
    f = _write(tmp_path, {"training": {"maxSteps": 7}, "deepspeed": {"optimizer": {"type": "Adam",
                                                                                  "params": {"lr": 5e-4}}}})
    result = _cli("schedule", str(f), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [5e-4] * 7


def test_typed_schedule_and_table(tmp_path: Path) -> None:
    f = _write(tmp_path, {"training": {"maxSteps": 12}, "optimizer": {"lr": 0.004},
                          "lrSchedule": {"type": "WarmupLR", "params": {"warmup_num_steps": 4,
                                                                        "warmup_type": "linear"}}})
    result = _cli("schedule", str(f))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# TrainingJob lr: WarmupLR")
    rows = [line.split() for line in lines if not line.startswith("#")]
    assert rows[0] == ["step", "lr"]
    assert [int(r[0]) for r in rows[1:]] == list(range(12))  # every step printed
    assert [float(r[1]) for r in rows[1:6]] == [0.0, 0.0, 0.001, 0.002, 0.003]
    assert lines[-1].startswith("# max 0.004 at step 5")


def test_png(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (the plot extra: installed with kubetrain[all])

    out = tmp_path / "lr.png"
    result = _cli("schedule", str(REPO / "manifests" / "examples" / "deepspeed.yaml"), "--steps", "50",
                  "--json", "--png", str(out))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 50  # stdout stays pure JSON
    assert out.read_bytes().startswith(b"\x89PNG")


def test_example_matches_warmup_decay_formula() -> None:
    result = _cli("schedule", str(REPO / "manifests" / "examples" / "deepspeed.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert len(got) == 5000  # training.maxSteps
    assert got[0] == 0.0 and got[501] == pytest.approx(3e-4, rel=1e-12)  # linear warmup over 500 steps
    assert got[2750] == pytest.approx(3e-4 * (5000 - 2749) / 4500, rel=1e-12)


def test_invalid_file_prints_problems_and_exits_one(tmp_path: Path) -> None:
    f = _write(tmp_path, {"deepspeed": {"scheduler": {"type": "WarmupDecayLR"}, "zero_optimization": {"stage": 9}}})
    result = _cli("schedule", str(f))
    assert result.returncode == 1
    assert f"{f}: spec.deepspeed.scheduler.params.total_num_steps: " in result.stdout
    assert f"{f}: spec.deepspeed.zero_optimization.stage: " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["/nonexistent/job.yaml"], ["--steps", "0"]])
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    f = _write(tmp_path, {})
    argv = args if args[0].startswith("/") else [str(f), *args]
    result = _cli("schedule", *argv)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
