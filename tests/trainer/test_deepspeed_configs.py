"""The DeepSpeed configs from public repositories that Kubetrain accepts train 5 steps on CPU (2 processes,
gloo, one process group for all of them), and the blocks the trainer honours do what they say: CPU offload
(FSDP2's CPUOffloadPolicy), activation checkpointing, tensorboard / csv_monitor files, and the 16-bit
consolidated final weights."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain import api
from kubetrain.api.deepspeed import analyse
from tests.trainer.harness import launch, torchrun
from tests.unit.test_deepspeed_reference import CONFIGS, load, typed_job

WORLD = 2


def accepted() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in CONFIGS:
        body = typed_job(load(name))
        if not analyse(api.TrainingJobSpec.model_validate(body)).problems:
            out.append((name, body))
    return out


def test_every_accepted_real_config_trains_five_steps(tmp_path: Path) -> None:
    runs = accepted()
    assert len(runs) >= 18, [n for n, _ in runs]  # 25 configs, 5 refused (see test_deepspeed_reference)
    payload = {"runs": [{"label": name, "spec": body} for name, body in runs]}
    results = launch("run_configs", WORLD, payload, tmp_path, timeout=600)
    for rank_result in results:
        for run in rank_result["runs"]:
            assert "error" not in run, (run["label"], run.get("error"))
            losses = [h["loss"] for h in run["history"]]
            assert len(losses) == 5 and all(math.isfinite(x) for x in losses), (run["label"], losses)
    # both ranks hold the same model after each run (the strategies really synchronise)
    assert [r["param_sum"] for r in results[0]["runs"]] == pytest.approx([r["param_sum"] for r in results[1]["runs"]])


FEATURES = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu"}, "stage3_gather_16bit_weights_on_model_save": True},
    "activation_checkpointing": {"partition_activations": False},
    "tensorboard": {"enabled": True, "output_path": "tb", "job_name": "run1"},
    "csv_monitor": {"enabled": True, "output_path": "csv"},
}


def test_offload_checkpointing_monitors_and_16bit_save_through_the_entry_point(tmp_path: Path) -> None:
    job = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "ds-features"},
           "spec": {"workers": {"replicas": 1, "procsPerWorker": WORLD}, "training": {"maxSteps": 5},
                    "deepspeed": FEATURES}}
    res = analyse(api.TrainingJob.model_validate(job).spec)
    assert res.problems == []
    assert res.spec.parallelism.offload == api.OffloadSpec(device="cpu", pin_memory=True)
    assert res.spec.training.activation_checkpointing is True
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    proc = torchrun(spec_file, WORLD, run_dir, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]

    # TensorBoard event files, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb" / "run1"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"Train/loss", "Train/lr", "Train/grad_norm", "Train/loss_scale"} <= tags
    loss = acc.Scalars("Train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [e.value for e in loss] == pytest.approx([s["loss"] for s in steps], rel=1e-6)

    # csv_monitor: DeepSpeed's default job name, one file per metric
    rows = list(csv.reader((run_dir / "csv" / "DeepSpeedJobName" / "Train_lr.csv").open()))
    assert rows[0] == ["step", "lr"] and [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]

    # the final weights, consolidated from the ZeRO-3 shards, in bf16
    from safetensors import safe_open

    with safe_open(str(run_dir / "final" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert names and all(str(f.get_tensor(n).dtype) == "torch.bfloat16" for n in names)
        shapes = {n: tuple(f.get_tensor(n).shape) for n in names}
    assert (256, 64) in shapes.values(), shapes  # the full token embedding (vocab x dModel), not a shard
    config = json.loads((run_dir / "final" / "config.json").read_text())
    assert config["dtype"] == "bf16" and config["step"] == 5
