"""Spec → typed config: defaults, aliases, the TrainingJob wrapper, readable errors."""

from __future__ import annotations

import json

import pytest

from kubetrain_trainer import config
from kubetrain_trainer.errors import SpecError

pytestmark = pytest.mark.trainer


def test_defaults_and_presets() -> None:
    cfg = config.from_spec({})
    assert cfg.model.preset == "tiny" and cfg.model.n_layers == 2
    assert cfg.parallel.strategy == "ddp" and cfg.precision.dtype == "fp32"
    big = config.from_spec({"model": {"preset": "1.3B", "nLayers": 4}})
    assert (big.model.n_layers, big.model.d_model, big.model.seq_len) == (4, 2048, 2048)


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
    assert cfg.training.gradient_clipping == 0.5
    assert cfg.parallel.strategy == "zero3"
    assert cfg.precision.dtype == "fp16" and cfg.precision.initial_scale_power == 8
    assert cfg.optimizer.type == "SGD" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0
    assert cfg.schedule.type == "WarmupLR" and cfg.schedule.params == {"warmup_num_steps": 5}
    assert cfg.checkpoint.claim_name == "ckpt" and cfg.checkpoint.init_from == "/x"
    assert cfg.elastic.collective_timeout_seconds == 60


def test_load_from_env_json_and_yaml_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KUBETRAIN_SPEC", json.dumps({"spec": {"training": {"maxSteps": 3}}}))
    assert config.load(None).training.max_steps == 3
    f = tmp_path / "job.yaml"
    f.write_text("kind: TrainingJob\nmetadata: {name: y}\nspec:\n  training: {maxSteps: 4}\n")
    cfg = config.load(str(f))
    assert (cfg.name, cfg.training.max_steps) == ("y", 4)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"parallelism": {"strategy": "zero4"}}, "strategy"),
        ({"training": {"maxSteps": "many"}}, "maxSteps"),
        ({"parallelism": {"strategy": "zero2", "sync": {"mode": "localSGD"}}}, "sync.mode localSGD"),
        ({"data": {"type": "tokens"}}, "path"),
        ({"model": {"dModel": 65, "nHeads": 2}}, "divisible"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_readable_spec_errors(spec: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SpecError) as err:
        config.from_spec(spec)
    assert needle in str(err.value)
    assert err.value.exit_code == 64


def test_dict_reader_without_api() -> None:
    cfg = config.parse_spec({"training": {"max_steps": 5}, "precision": {"dtype": "BF16"}})
    assert cfg.training.max_steps == 5 and cfg.precision.dtype == "bf16"


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
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("KUBETRAIN_SPEC", json.dumps({"spec": {"deepspeed": DEEPSPEED}}))
    cfg = config.load(None)
    assert cfg.training.global_batch_size == 16 and cfg.training.micro_batch_size == 2
    assert cfg.training.gradient_clipping == 0.7
    assert cfg.parallel.strategy == "zero3"
    assert cfg.precision.dtype == "fp16" and cfg.precision.initial_scale_power == 12
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.betas == (0.9, 0.95) and cfg.optimizer.weight_decay == 0.1
    assert cfg.schedule.type == "WarmupCosineLR"
    bad = dict(DEEPSPEED, gradient_accumulation_steps=4)  # 16 != 2 x 4 x 3
    with pytest.raises(SpecError, match="train_batch_size"):
        config.from_spec({"deepspeed": bad}, world_size=3)
