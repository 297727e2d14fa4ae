"""Spec -> the worker's config: presets, the TrainingJob wrapper, loading, DeepSpeed at the real
world size, readable errors. (That the trainer holds the api models themselves, with their
defaults and bounds, is tests/unit/test_trainer_config.py.)"""

from __future__ import annotations

import json

import pytest

from kubetrain_trainer import config
from kubetrain_trainer.errors import SpecError

pytestmark = pytest.mark.trainer


def test_defaults_and_presets() -> None:
    cfg = config.from_spec({})
    assert cfg.model_summary()["preset"] == "tiny" and cfg.shape.n_layers == 2
    assert cfg.strategy == "ddp" and cfg.dtype == "fp32"
    big = config.from_spec({"model": {"preset": "1.3B", "nLayers": 4}})
    assert (big.shape.n_layers, big.shape.d_model, big.shape.seq_len) == (4, 2048, 2048)


def test_whole_training_job_and_camel_case() -> None:
    job = {
        "apiVersion": "kubetrain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "demo"},
        "spec": {
            "training": {"maxSteps": 7, "globalBatchSize": 12, "microBatchSize": 3, "gradientClipping": 0.5},
            "parallelism": {"strategy": "zero3"},
            "precision": {"dtype": "fp16", "initialScalePower": 8},
            "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
            "lrSchedule": {"type": "WarmupLR", "params": {"warmup_num_steps": 5}},
            "checkpoint": {"intervalSteps": 10, "storage": {"claimName": "ckpt"}, "initFrom": {"path": "/x"}},
            "elastic": {"collectiveTimeoutSeconds": 60},
        },
    }
    cfg = config.from_spec(job)
    assert cfg.name == "demo"
    assert cfg.training.max_steps == 7 and cfg.training.micro_batch_size == 3
    assert cfg.gradient_clipping == 0.5
    assert cfg.strategy == "zero3"
    assert cfg.dtype == "fp16" and cfg.precision.initial_scale_power == 8
    assert cfg.precision.hysteresis == 2  # fp16: every loss-scale field resolved (DeepSpeed's default)
    assert cfg.optimizer.type == "SGD" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0
    assert cfg.schedule_type == "WarmupLR" and (cfg.schedule.params or {})["warmup_num_steps"] == 5
    assert cfg.checkpoint.storage is not None and cfg.checkpoint.storage.claim_name == "ckpt"
    assert cfg.checkpoint.init_from is not None and cfg.checkpoint.init_from.path == "/x"
    assert cfg.elastic.collective_timeout_seconds == 60


def test_load_from_env_json_and_yaml_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("KUBETRAIN_SPEC_FILE", raising=False)
    monkeypatch.setenv("KUBETRAIN_SPEC", json.dumps({"spec": {"training": {"maxSteps": 3}}}))
    assert config.load(None).training.max_steps == 3
    f = tmp_path / "job.yaml"
    f.write_text("apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: job-y}\n"
                 "spec:\n  training: {maxSteps: 4}\n")
    cfg = config.load(str(f))
    assert (cfg.name, cfg.training.max_steps) == ("job-y", 4)
    monkeypatch.delenv("KUBETRAIN_SPEC")
    with pytest.raises(SpecError, match="no spec given"):
        config.load(None)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"parallelism": {"strategy": "zero4"}}, "spec.parallelism.strategy: 'zero4' is not allowed"),
        ({"training": {"maxSteps": "many"}}, "spec.training.maxSteps: must be an integer"),
        ({"parallelism": {"strategy": "zero2", "sync": {"mode": "localSGD"}}}, "spec.parallelism.sync.mode"),
        # zero2 given only by DeepSpeed: the CEL rule cannot see it, the semantic check can
        ({"deepspeed": {"train_batch_size": 8, "zero_optimization": {"stage": 2}}, "parallelism": {"sync": {"mode": "diloco"}}},
         "spec.parallelism.sync.mode: localSGD/diloco/powerSGD replicate the model"),
        ({"model": {"dModel": 65, "nHeads": 2}}, "divisible"),
        ({"model": {"preset": "124M", "nHeads": 5}}, "dModel (768) must be divisible by nHeads (5"),
        ({"unknownField": 1}, "unknownField"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_readable_spec_errors(spec: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SpecError) as err:
        config.from_spec(spec)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)  # one line
    assert err.value.exit_code == 64


DEEPSPEED = {
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 100, "warmup_num_steps": 10}},
    "fp16": {"enabled": True, "initial_scale_power": 12},
    "zero_optimization": {"stage": 3},
    "gradient_clipping": 0.7,
}


def test_deepspeed_config_resolves_into_typed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETRAIN_SPEC_FILE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("KUBETRAIN_SPEC", json.dumps({"spec": {"deepspeed": DEEPSPEED}}))
    cfg = config.load(None)
    assert cfg.world_size == 2
    assert cfg.global_batch_size == 16 and cfg.training.micro_batch_size == 2
    assert cfg.gradient_clipping == 0.7
    assert cfg.strategy == "zero3"
    assert cfg.dtype == "fp16" and cfg.precision.initial_scale_power == 12
    assert cfg.lr == 1e-3 and cfg.optimizer.betas == [0.9, 0.95] and cfg.optimizer.weight_decay == 0.1
    assert cfg.schedule_type == "WarmupCosineLR"
    bad = dict(DEEPSPEED, gradient_accumulation_steps=4)  # 16 != 2 x 4 x 3
    with pytest.raises(SpecError, match="train_batch_size"):
        config.from_spec({"deepspeed": bad}, world_size=3)


def test_micro_batch_resolved_at_the_real_world_size() -> None:
    """Without a micro batch, DeepSpeed's rule at the real size W gives ceil(G / W) (no accumulation)."""
    assert config.from_spec({"training": {"globalBatchSize": 12}}).training.micro_batch_size is None
    assert config.from_spec({"training": {"globalBatchSize": 12}}, world_size=3).training.micro_batch_size == 4
    assert config.from_spec({"training": {"globalBatchSize": 12}}, world_size=5).training.micro_batch_size == 3
    with pytest.raises(SpecError, match="smaller than the world size 16"):
        config.from_spec({"training": {"globalBatchSize": 12}}, world_size=16)
