"""bf16 and fp16 train with every strategy; fp16 skips an injected overflow (seen by one rank only)
and recovers without advancing the lr schedule; a run of non-finite losses fails readably."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .harness import launch

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

BASE: dict[str, Any] = {
    "model": {"preset": "tiny"},
    "training": {"maxSteps": 16, "globalBatchSize": 8, "microBatchSize": 2},
    "optimizer": {"type": "AdamW", "lr": 3e-3},
}


def _spec(strategy: str, precision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["parallelism"] = {"strategy": strategy}
    spec["precision"] = precision
    spec.update(extra)
    return spec


WARMUP = {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_type": "linear", "warmup_min_lr": 0}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    items = [
        {"label": f"{dt}-{s}", "spec": _spec(s, {"dtype": dt})}
        for dt in ("bf16", "fp16")
        for s in ("ddp", "zero1", "zero2", "zero3")
    ]
    for s in ("ddp", "zero3"):
        items.append({
            "label": f"overflow-{s}",
            "spec": _spec(s, {"dtype": "fp16"}, lrSchedule=WARMUP),
            "faults": {"inf_grad_steps": [3, 4, 5], "rank": 1},  # only rank 1 overflows
        })
    items.append({"label": "fp32-nan-once", "spec": _spec("zero2", {"dtype": "fp32"}), "faults": {"nan_loss_steps": [4]}})
    items.append({
        "label": "fp32-nan-forever",
        "spec": _spec("ddp", {"dtype": "fp32", "maxConsecutiveNonFinite": 3}),
        "faults": {"nan_loss_steps": [2, *range(5, 17)]},
    })
    items.append({"label": "deepspeed-fp16-zero2", "spec": {
        "model": {"preset": "tiny"},
        "training": {"maxSteps": 16},
        "deepspeed": {
            "train_batch_size": 8, "gradient_accumulation_steps": 2,
            "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
            "fp16": {"enabled": True, "initial_scale_power": 10}, "zero_optimization": {"stage": 2},
        },
    }})
    results = launch("run_configs", 2, {"runs": items}, tmp_path_factory.mktemp("precision"))
    assert results[0]["runs"] == results[1]["runs"]
    return {r["label"]: r for r in results[0]["runs"]}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3"])
def test_mixed_precision_trains(runs: dict[str, dict[str, Any]], dtype: str, strategy: str) -> None:
    hist = runs[f"{dtype}-{strategy}"]["history"]
    losses = [h["loss"] for h in hist]
    assert losses[-1] < losses[0] - 0.5, losses
    assert not any(h["skipped"] for h in hist[2:])
    ddp = runs[f"{dtype}-ddp"]["history"]
    assert losses == pytest.approx([h["loss"] for h in ddp], rel=2e-2)  # autocast vs FSDP MixedPrecisionPolicy
    # gradients are not scaled differently (e.g. by the world size) on the mixed-precision reduce path
    assert [h["grad_norm"] for h in hist[:4]] == pytest.approx([h["grad_norm"] for h in ddp[:4]], rel=2e-2)


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_fp16_skips_injected_overflow_and_recovers(runs: dict[str, dict[str, Any]], strategy: str) -> None:
    run = runs[f"overflow-{strategy}"]
    hist = run["history"]
    skipped = [h["step"] for h in hist if h["skipped"]]
    assert skipped == [3, 4, 5]
    assert hist[-1]["skipped_steps"] == 3 and run["applied_steps"] == 16 - 3
    scales = [h["loss_scale"] for h in hist]
    if strategy == "ddp":  # DeepSpeed's stage-0 fp16 optimizer: every overflow halves, no hysteresis
        assert scales[:5] == [65536.0] * 3 + [32768.0, 16384.0] and scales[5:] == [8192.0] * 11
    else:  # ZeRO: hysteresis 2, the first overflow only spends hysteresis, the next two halve the scale
        assert scales[:5] == [65536.0] * 4 + [32768.0] and scales[5:] == [16384.0] * 11
    lrs = [h["lr"] for h in hist]
    # skipped steps do not advance the schedule: step 6 uses the lr of applied step 2
    assert lrs[2:6] == [lrs[2]] * 4 and lrs[6] > lrs[5]
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3


def test_non_finite_loss_skipped_once(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["fp32-nan-once"]
    assert [h["step"] for h in run["history"] if h["skipped"]] == [4]
    assert run["applied_steps"] == 15


def test_non_finite_loss_fails_after_n_in_a_row(runs: dict[str, dict[str, Any]]) -> None:
    err = runs["fp32-nan-forever"]["error"]
    assert err["type"] == "DivergedError" and err["exit_code"] == 65
    assert "not finite for 3 consecutive steps" in err["message"] and "through step 7" in err["message"]


def test_deepspeed_config_runs_as_configured(runs: dict[str, dict[str, Any]]) -> None:
    """fp16 + ZeRO-2 + batch 8 from a DeepSpeed config: same losses as the typed fp16-zero2 run."""
    hist = runs["deepspeed-fp16-zero2"]["history"]
    assert hist[0]["loss_scale"] == 2.0**10
    typed = [h["loss"] for h in runs["fp16-zero2"]["history"]]
    assert [h["loss"] for h in hist] == pytest.approx(typed, rel=1e-3)
