"""`spec.deepspeed`: DeepSpeed's batch rule, key mapping, defaults and rejections (kubetrain.api.deepspeed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain import api
from kubetrain.api import validate
from kubetrain.api.deepspeed import (
    DeepSpeedConfigError,
    analyse,
    deepspeed_notes,
    deepspeed_problems,
    resolve,
    unsupported_keys,
    valid_world_sizes,
)
from kubetrain.api.validate import validate_object

REPO = Path(__file__).resolve().parents[2]
DS = "spec.deepspeed"


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def spec(ds: dict[str, Any] | None = None, **typed: Any) -> api.TrainingJobSpec:
    """A spec; a DeepSpeed config without batch keys gets training.globalBatchSize 8 unless the test
    sets the batch itself (DeepSpeed needs a batch size: see test_no_batch_size_anywhere_is_rejected)."""
    body = dict(typed)
    if ds is not None:
        body["deepspeed"] = ds
        training = dict(body.get("training") or {})
        if ds and not any(k in ds for k in BATCH_KEYS) and "microBatchSize" not in training:
            training.setdefault("globalBatchSize", 8)
            body["training"] = training
    return api.TrainingJobSpec.model_validate(body)


def on(replicas: int, gpus: int = 1) -> dict[str, Any]:
    """A workers section giving world size replicas x gpus."""
    return {"replicas": replicas, "gpusPerWorker": gpus}


def job(spec_body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
            "spec": spec_body}


def problems(s: api.TrainingJobSpec, world_size: int | None = None) -> dict[str, str]:
    return {p.path: f"{p.message}; fix: {p.fix}" for p in analyse(s, world_size).problems}


def only_problem(s: api.TrainingJobSpec, path: str, *needles: str, world_size: int | None = None) -> str:
    found = problems(s, world_size)
    assert path in found, found
    for needle in needles:
        assert needle in found[path], found[path]
    return found[path]


# ------------------------------------------------------------------------------ batch rule


@pytest.mark.parametrize(
    ("ds", "workers", "expected"),
    [
        # all three given and consistent: 64 = 4 x 2 x 8
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
         on(2, 4), (64, 4, 2)),
        # train + micro -> accumulation = 64 / (4 x 8)
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4}, on(2, 4), (64, 4, 2)),
        # train + accumulation -> micro = 64 / 8 / 2
        ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, on(2, 4), (64, 4, 2)),
        # micro + accumulation -> train = 4 x 2 x 8
        ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, on(2, 4), (64, 4, 2)),
        # train alone -> no accumulation; micro stays "train / world size" (None) at the nominal size
        ({"train_batch_size": 64}, on(2, 4), (64, None, 1)),
        # micro alone -> train = micro x world size, no accumulation
        ({"train_micro_batch_size_per_gpu": 4}, on(2, 4), (32, 4, 1)),
        # nothing: Kubetrain's default global batch 8
        ({}, on(1, 1), (8, None, 1)),
    ],
)
def test_batch_rule_and_derivations(ds: dict[str, Any], workers: dict[str, Any], expected: tuple[Any, ...]) -> None:
    res = analyse(spec(ds, workers=workers))
    assert res.problems == []
    t = res.spec.training
    assert (t.global_batch_size, t.micro_batch_size, res.gradient_accumulation_steps) == expected
    assert res.world_size == workers["replicas"] * max(1, workers["gpusPerWorker"])


def test_batch_rule_at_an_explicit_world_size() -> None:
    s = spec({"train_micro_batch_size_per_gpu": 4})
    assert resolve(s, world_size=16).training.global_batch_size == 64
    s = spec({"train_batch_size": 64})
    r = resolve(s, world_size=8)
    assert (r.training.global_batch_size, r.training.micro_batch_size) == (64, 8)
    assert analyse(s, 8).gradient_accumulation_steps == 1


def test_all_three_must_agree_naming_the_keys() -> None:
    s = spec({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
             workers=on(3, 1))
    msg = only_problem(s, f"{DS}.train_batch_size", f"{DS}.train_batch_size=64",
                       f"{DS}.train_micro_batch_size_per_gpu=4", f"{DS}.gradient_accumulation_steps=2",
                       "world size 3", "= 24")
    assert "set spec.deepspeed.train_batch_size to a multiple of 12 such as 24" in msg
    # The same config is fine at 8 processes and wrong at 4 when asked explicitly.
    good = spec({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})
    assert resolve(good, world_size=8).training.global_batch_size == 64
    with pytest.raises(DeepSpeedConfigError, match="world size 4"):
        resolve(good, world_size=4)


@pytest.mark.parametrize(
    ("ds", "path", "needle", "elsewhere"),
    [  # DeepSpeed's floor divisions at the job's size (8); (global, micro, accumulation) at world size 5
        ({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 4}, "train_batch_size", "= 32", (60, 4, 3)),
        ({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4}, "gradient_accumulation_steps",
         "16 // 4 // 8 = 0", (16, 4, 1)),
        ({"train_batch_size": 64, "gradient_accumulation_steps": 3}, "train_batch_size", "= 48", (64, 5, 3)),
        ({"train_batch_size": 30}, "train_batch_size", "= 24", (30, 6, 1)),
    ],
)
def test_derivations_that_do_not_divide_are_deepspeeds_verdict(
        ds: dict[str, Any], path: str, needle: str, elsewhere: tuple[int, int, int]) -> None:
    """At the job's size DeepSpeed's arithmetic decides; an elastic run at another size splits exactly."""
    s = spec(ds, workers=on(2, 4))
    only_problem(s, f"{DS}.{path}", needle)
    res = analyse(s, world_size=5)
    assert res.problems == []
    t = res.spec.training
    assert (t.global_batch_size, t.micro_batch_size, res.gradient_accumulation_steps) == elsewhere


def test_global_batch_smaller_than_the_world_size() -> None:
    # DeepSpeed: micro = 6 // 8 = 0 -> rejected; Kubetrain's own rule says the same at another size
    only_problem(spec({"train_batch_size": 6}, workers=on(2, 4)), f"{DS}.train_micro_batch_size_per_gpu",
                 "computes to 0", "6 // 8 = 0", "at least 8")
    only_problem(spec({"train_batch_size": 6}, workers=on(2, 4)), f"{DS}.train_batch_size",
                 "train_batch_size=6 is smaller than the world size 9", "at least 9", world_size=9)


def test_accumulation_alone_is_rejected_like_deepspeed() -> None:
    only_problem(spec({"gradient_accumulation_steps": 4}), f"{DS}.gradient_accumulation_steps",
                 "train_batch_size or train_micro_batch_size_per_gpu")
    # With a typed global batch it is a complete triple.
    res = analyse(spec({"gradient_accumulation_steps": 2}, training={"globalBatchSize": 16}, workers=on(2)))
    assert res.problems == [] and res.spec.training.micro_batch_size == 4


@pytest.mark.parametrize("key", ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"])
@pytest.mark.parametrize("value", [32.5, 32.0, "32", True, [32]])
def test_non_integer_batch_sizes_rejected(key: str, value: Any) -> None:
    only_problem(spec({key: value}), f"{DS}.{key}", "must be an integer")


@pytest.mark.parametrize("key", ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"])
@pytest.mark.parametrize("value", [0, -8])
def test_non_positive_batch_sizes_rejected(key: str, value: int) -> None:
    only_problem(spec({key: value}), f"{DS}.{key}", ">= 1")


def test_typed_and_deepspeed_batch_contradiction_names_both() -> None:
    msg = only_problem(spec({"train_batch_size": 32}, training={"globalBatchSize": 64}),
                       "spec.training.globalBatchSize")
    assert msg.startswith("spec.training.globalBatchSize=64 contradicts spec.deepspeed.train_batch_size=32")
    only_problem(spec({"train_micro_batch_size_per_gpu": 2}, training={"microBatchSize": 4}),
                 "spec.training.microBatchSize",
                 "spec.training.microBatchSize=4 contradicts spec.deepspeed.train_micro_batch_size_per_gpu=2")
    # Equal values are no contradiction.
    assert problems(spec({"train_batch_size": 32}, training={"globalBatchSize": 32})) == {}


def test_typed_fields_join_the_deepspeed_triple() -> None:
    s = spec({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
             training={"globalBatchSize": 64}, workers=on(2, 4))
    res = analyse(s)
    assert res.problems == [] and res.gradient_accumulation_steps == 2
    bad = spec({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
               training={"globalBatchSize": 48}, workers=on(2, 4))
    only_problem(bad, "spec.training.globalBatchSize", "spec.training.globalBatchSize=48",
                 f"{DS}.train_micro_batch_size_per_gpu=4", f"{DS}.gradient_accumulation_steps=2")


def test_typed_only_uneven_split_is_fine() -> None:
    assert problems(spec(workers=on(3))) == {}
    res = analyse(spec(training={"globalBatchSize": 64, "microBatchSize": 4}, workers=on(3, 2)))
    assert res.problems == [] and res.gradient_accumulation_steps == 3  # ceil(64 / 6) = 11 samples, micro 4
    r = resolve(spec(training={"globalBatchSize": 10}), world_size=3)
    assert (r.training.global_batch_size, r.training.micro_batch_size) == (10, 4)  # ceil(10 / 3)
    only_problem(spec(training={"globalBatchSize": 4}, workers=on(3, 2)), "spec.training.globalBatchSize",
                 "smaller than the world size 6")


def test_elastic_range_splits_at_every_size() -> None:
    s = spec(training={"globalBatchSize": 256, "microBatchSize": 4},
             workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 8, "gpusPerWorker": 8})
    assert deepspeed_problems(s, {}) == []
    assert valid_world_sizes(s) == ([2, 3, 4, 5, 6, 7, 8], [])
    assert not any("split" in n or "world size" in n for n in deepspeed_notes(s))
    # More processes than samples at the top of the range: noted.
    small = spec(training={"globalBatchSize": 16}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 5,
                                                            "gpusPerWorker": 4})
    assert valid_world_sizes(small) == ([1, 2, 3, 4], [5])
    assert any("smaller than the world size at 5 worker(s)" in n for n in deepspeed_notes(small))


def test_elastic_fixed_accumulation_is_noted() -> None:
    s = spec({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4},
             workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4})
    assert any("gradient_accumulation_steps=4 holds at 4 processes" in n for n in deepspeed_notes(s))


# ------------------------------------------------------------------------------ defaults


def test_kubetrain_defaults_fill_every_field() -> None:
    r = resolve(spec())
    assert r.training.global_batch_size == 8 and r.training.micro_batch_size is None
    assert r.training.gradient_clipping == 1.0
    o = r.optimizer
    assert (o.type, o.lr, o.betas, o.eps, o.weight_decay, o.momentum, o.nesterov) == (
        "AdamW", 3e-4, [0.9, 0.999], 1e-8, 0.01, 0.0, False)
    assert r.precision.dtype == "fp32" and r.precision.loss_scale is None
    assert r.parallelism.strategy == "ddp"
    assert r.lr_schedule.type == "Constant"
    assert resolve(spec(optimizer={"type": "SGD"})).optimizer.weight_decay == 0.0


def test_resolve_returns_a_new_valid_idempotent_spec() -> None:
    ds = {"train_batch_size": 32, "gradient_clipping": 0.5, "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}, "fp16": {"enabled": True},
          "zero_optimization": {"stage": 3}}
    s = spec(ds, workers=on(2, 2))
    before = s.model_dump()
    r = resolve(s)
    assert s.model_dump() == before, "the input is not modified"
    assert r is not s and r.deepspeed == s.deepspeed
    assert resolve(r) == r
    dumped = r.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert validate_object(job(dumped)) == []


def test_gradient_clipping() -> None:
    assert resolve(spec({"gradient_clipping": 0.5})).training.gradient_clipping == 0.5
    assert resolve(spec({"gradient_clipping": 0})).training.gradient_clipping == 0.0  # 0 disables
    only_problem(spec({"gradient_clipping": -1.0}), f"{DS}.gradient_clipping", ">= 0.0")
    only_problem(spec({"gradient_clipping": "high"}), f"{DS}.gradient_clipping", "must be a number")
    only_problem(spec({"gradient_clipping": 0.5}, training={"gradientClipping": 2.0}),
                 "spec.training.gradientClipping",
                 "spec.training.gradientClipping=2.0 contradicts spec.deepspeed.gradient_clipping=0.5")


# ------------------------------------------------------------------------------ optimizer


@pytest.mark.parametrize(
    ("ds_type", "params", "expected"),
    [
        ("Adam", {}, "AdamW"),  # DeepSpeed's Adam is AdamW by default
        ("Adam", {"adam_w_mode": True}, "AdamW"),
        ("Adam", {"adam_w_mode": False}, "Adam"),
        ("AdamW", {}, "AdamW"),
        ("adam", {"adam_w_mode": False}, "Adam"),  # DeepSpeed's own names are case-insensitive
        ("ADAMW", {}, "AdamW"),
        ("Adam", {"torch_adam": True, "adam_w_mode": False}, "Adam"),
        ("SGD", {}, "SGD"),
    ],
)
def test_optimizer_type(ds_type: str, params: dict[str, Any], expected: str) -> None:
    r = resolve(spec({"optimizer": {"type": ds_type, "params": params}}))
    assert r.optimizer.type == expected


def test_adamw_ignores_adam_w_mode_false_with_a_note() -> None:
    res = analyse(spec({"optimizer": {"type": "AdamW", "params": {"adam_w_mode": False}}}))
    assert res.spec.optimizer.type == "AdamW"
    assert any("adam_w_mode=false has no effect" in n for n in res.notes)


def test_optimizer_params_and_deepspeed_defaults() -> None:
    o = resolve(spec({"optimizer": {"type": "Adam", "params": {
        "lr": 2e-4, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.1}}})).optimizer
    assert (o.type, o.lr, o.betas, o.eps, o.weight_decay) == ("AdamW", 2e-4, [0.9, 0.95], 1e-6, 0.1)
    # An optimizer section means DeepSpeed's optimizer defaults: FusedAdam lr 1e-3, weight_decay 0 ...
    o = resolve(spec({"optimizer": {"type": "Adam"}})).optimizer
    assert (o.lr, o.betas, o.eps, o.weight_decay) == (1e-3, [0.9, 0.999], 1e-8, 0.0)
    # ... torch's AdamW (torch_adam: true) defaults weight_decay to 0.01.
    assert resolve(spec({"optimizer": {"type": "Adam", "params": {"torch_adam": True}}})).optimizer.weight_decay == 0.01
    o = resolve(spec({"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "nesterov": True}}})).optimizer
    assert (o.type, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("SGD", 0.1, 0.9, True, 0.0)
    # A typed value fills what the DeepSpeed section leaves out.
    assert resolve(spec({"optimizer": {"type": "Adam"}}, optimizer={"lr": 5e-5})).optimizer.lr == 5e-5


@pytest.mark.parametrize(
    ("optimizer", "path", "needle"),
    [
        ({"type": "Lamb"}, "type", "Lamb (LAMB: Adam with a per-layer trust ratio) is not supported"),
        ({"type": "OneBitAdam"}, "type", "OneBitAdam (1-bit Adam"),
        ({"type": "Lion"}, "type", "DeepSpeed optimizer 'Lion' is not supported"),
        ({"type": "Adagrad"}, "type", "'Adagrad' is not supported"),
        ({"type": "RMSprop"}, "type", "torch.optim.RMSprop is accepted by DeepSpeed but not supported"),
        ({"type": "Adamm"}, "type", "unknown optimizer type 'Adamm'"),
        ({"type": "sgd"}, "type", "did you mean 'SGD'?"),
        ({"params": {"lr": 0.1}}, "type", "is missing"),
        ({"type": 3}, "type", "must be a string"),
        ({"type": "Adam", "params": {"max_grad_norm": 1.0}}, "params.max_grad_norm", "gradient_clipping"),
        ({"type": "Adam", "params": {"momentum": 0.9}}, "params.momentum", "not a parameter of FusedAdam"),
        ({"type": "SGD", "params": {"betas": [0.9, 0.99]}}, "params.betas", "not a parameter of torch.optim.SGD"),
        ({"type": "Adam", "params": {"amsgrad": True}}, "params.amsgrad", "AMSGrad is not supported"),
        ({"type": "Adam", "params": {"lr": 0}}, "params.lr", "> 0.0"),
        ({"type": "Adam", "params": {"betas": [0.9]}}, "params.betas", "two numbers"),
        ({"type": "Adam", "params": {"weight_decay": -0.1}}, "params.weight_decay", ">= 0.0"),
        ({"type": "Adam", "params": {"adam_w_mode": "yes"}}, "params.adam_w_mode", "true or false"),
        ({"type": "SGD", "params": {"nesterov": True}}, "params.nesterov", "momentum > 0"),
        ({"type": "SGD", "params": {"momentum": 1.5}}, "params.momentum", "< 1.0"),
    ],
)
def test_optimizer_rejections_name_the_key(optimizer: dict[str, Any], path: str, needle: str) -> None:
    only_problem(spec({"optimizer": optimizer}), f"{DS}.optimizer.{path}", needle)


def test_optimizer_contradictions_name_both() -> None:
    msg = only_problem(spec({"optimizer": {"type": "Adam"}}, optimizer={"type": "Adam"}), "spec.optimizer.type")
    assert msg.startswith("spec.optimizer.type=Adam contradicts spec.deepspeed.optimizer.type=Adam")
    assert "AdamW unless params.adam_w_mode is false" in msg
    assert problems(spec({"optimizer": {"type": "Adam"}}, optimizer={"type": "AdamW"})) == {}
    assert problems(spec({"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}},
                         optimizer={"type": "Adam"})) == {}
    only_problem(spec({"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}, optimizer={"lr": 3e-4}),
                 "spec.optimizer.lr", "spec.optimizer.lr=0.0003 contradicts spec.deepspeed.optimizer.params.lr=0.001")
    only_problem(spec({"optimizer": {"type": "Adam", "params": {"betas": [0.9, 0.95]}}},
                      optimizer={"betas": [0.9, 0.999]}),
                 "spec.optimizer.betas", "[0.9, 0.999] contradicts spec.deepspeed.optimizer.params.betas=[0.9, 0.95]")


# ------------------------------------------------------------------------------ scheduler


def test_scheduler_maps_onto_lr_schedule() -> None:
    params = {"warmup_num_steps": 10, "total_num_steps": 100, "warmup_max_lr": 1e-3}
    r = resolve(spec({"scheduler": {"type": "WarmupDecayLR", "params": params}}))
    assert r.lr_schedule.type == "WarmupDecayLR" and r.lr_schedule.params == params
    # A typed param fills what the DeepSpeed params leave out.
    r = resolve(spec({"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 100}}},
                     lrSchedule={"params": {"warmup_num_steps": 5}}))
    assert r.lr_schedule.params == {"total_num_steps": 100, "warmup_num_steps": 5}


@pytest.mark.parametrize(
    ("scheduler", "path", "needle"),
    [
        ({"type": "WarmupDecay"}, "type", "did you mean 'WarmupDecayLR'?"),
        ({"type": "CosineAnnealing"}, "type", "unknown scheduler type 'CosineAnnealing'"),
        ({"type": "StepLR", "params": {"step_size": 10}}, "type",
         "torch.optim.lr_scheduler.StepLR is accepted by DeepSpeed but not supported"),
        ({"type": "Constant"}, "type", "'Constant' is not a DeepSpeed scheduler"),
        ({"params": {"warmup_num_steps": 10}}, "type", "is missing"),
        ({"type": "WarmupDecayLR"}, "params.total_num_steps", "requires parameter 'total_num_steps'"),
        ({"type": "WarmupCosineLR", "params": {}}, "params.total_num_steps", "requires parameter"),
        ({"type": "OneCycle", "params": {"cycle_min_lr": 0.001}}, "params.cycle_max_lr", "requires parameter"),
        ({"type": "WarmupLR", "params": {"warmup_num_steps": 10.5}}, "params.warmup_num_steps", "integer"),
        ({"type": "WarmupLR", "params": {"warmup_type": "cosine"}}, "params.warmup_type", "must be one of"),
        ({"type": "WarmupLR", "params": {"warmup_steps": 10}}, "params.warmup_steps", "did you mean"),
        ({"type": "WarmupLR", "params": [1, 2]}, "params", "must be an object"),
    ],
)
def test_scheduler_rejections_name_the_key(scheduler: dict[str, Any], path: str, needle: str) -> None:
    only_problem(spec({"scheduler": scheduler}), f"{DS}.scheduler.{path}", needle)


def test_scheduler_contradiction_and_typed_param_paths() -> None:
    only_problem(spec({"scheduler": {"type": "WarmupLR"}}, lrSchedule={"type": "WarmupCosineLR"}),
                 "spec.lrSchedule.type", "spec.lrSchedule.type=WarmupCosineLR contradicts "
                 "spec.deepspeed.scheduler.type=WarmupLR")
    only_problem(spec({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}},
                      lrSchedule={"params": {"warmup_num_steps": 20}}),
                 "spec.lrSchedule.params.warmup_num_steps", "=20 contradicts", "warmup_num_steps=10")
    only_problem(spec(lrSchedule={"type": "WarmupLR", "params": {"warmup_num_steps": 0}}),
                 "spec.lrSchedule.params.warmup_num_steps", "> 0")


def test_auto_total_num_steps_is_max_steps() -> None:
    res = analyse(spec({"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}}},
                       training={"maxSteps": 300}))
    assert res.problems == [] and res.spec.lr_schedule.params == {"total_num_steps": 300}
    assert res.auto == ["scheduler.params.total_num_steps"]


def test_auto_takes_the_typed_fields_like_hugging_face() -> None:
    """"auto" = the typed field (or its documented default), never DeepSpeed's in-section default."""
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"},
          "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
          "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                    "weight_decay": "auto"}},
          "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                           "warmup_num_steps": "auto", "total_num_steps": "auto"}}}
    res = analyse(spec(ds, workers=on(2, 2), training={"globalBatchSize": 32, "microBatchSize": 4, "maxSteps": 50,
                                                       "gradientClipping": 0.5},
                       optimizer={"lr": 2e-4, "betas": [0.9, 0.95], "weightDecay": 0.1},
                       precision={"dtype": "bf16"}, lrSchedule={"params": {"warmup_num_steps": 7}}))
    assert res.problems == []
    r = res.spec
    assert (r.training.global_batch_size, r.training.micro_batch_size, res.gradient_accumulation_steps) == (32, 4, 2)
    assert r.training.gradient_clipping == 0.5 and r.precision.dtype == "bf16"
    assert (r.optimizer.lr, r.optimizer.betas, r.optimizer.eps, r.optimizer.weight_decay) == (2e-4, [0.9, 0.95],
                                                                                            1e-8, 0.1)
    assert r.lr_schedule.params == {"warmup_min_lr": 0.0, "warmup_max_lr": 2e-4, "warmup_num_steps": 7,
                                    "total_num_steps": 50}
    # Without typed values the autos take Kubetrain's defaults (3e-4, not FusedAdam's 1e-3).
    bare = analyse(spec({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}}))
    assert (bare.spec.optimizer.lr, bare.spec.optimizer.weight_decay) == (3e-4, 0.01)


def test_auto_train_batch_size_needs_the_typed_global_batch() -> None:
    msg = only_problem(spec({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}, workers=on(16)),
                       f"{DS}.train_batch_size", "\"auto\"", "spec.training.globalBatchSize")
    assert "8" not in msg  # never blames the default global batch
    assert problems(spec({"train_batch_size": "auto"}, training={"globalBatchSize": 64}, workers=on(16))) == {}


def test_no_batch_size_anywhere_is_rejected_like_deepspeed() -> None:
    s = api.TrainingJobSpec.model_validate({"deepspeed": {"optimizer": {"type": "AdamW"}}})
    only_problem(s, f"{DS}.train_batch_size", "DeepSpeed needs train_batch_size or train_micro_batch_size_per_gpu")


def test_auto_fp16_bf16_without_a_typed_dtype_is_fp32_with_a_note() -> None:
    res = analyse(spec({"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}))
    assert res.problems == [] and res.spec.precision.dtype == "fp32"
    assert any("takes spec.precision.dtype" in n for n in res.notes)


def test_auto_placeholders_are_noted_once() -> None:
    res = analyse(spec({"train_batch_size": "auto", "gradient_clipping": "auto",
                        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
                        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}},
                       training={"globalBatchSize": 8}))
    assert res.problems == []
    assert (res.spec.training.gradient_clipping, res.spec.optimizer.lr, res.spec.optimizer.weight_decay) == (
        1.0, 3e-4, 0.01)
    auto = [n for n in res.notes if '"auto"' in n]
    assert auto == ['"auto" (the Hugging Face convention) is taken from the typed fields for spec.deepspeed.'
                    "{gradient_clipping, optimizer.params.lr, optimizer.params.weight_decay, train_batch_size, "
                    "zero_optimization.reduce_bucket_size}: `kubetrain validate --explain` shows the values"]


def test_warmup_decay_default_peak_is_noted() -> None:
    notes = deepspeed_notes(spec({"optimizer": {"type": "Adam", "params": {"lr": 3e-4}},
                                  "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 10}}}))
    assert any("warmup_max_lr=0.001 (DeepSpeed's default), not to the optimizer lr 0.0003" in n for n in notes)


def test_exponent_strings_from_yaml_are_numbers() -> None:
    # PyYAML reads `3e-4` as a string; the API server (YAML 1.2) stores a number.
    doc = yaml.safe_load("spec:\n  deepspeed:\n    optimizer: {type: Adam, params: {lr: 3e-4}}\n"
                         "    scheduler: {type: WarmupLR, params: {warmup_max_lr: 3e-4, warmup_num_steps: 10}}\n")
    assert doc["spec"]["deepspeed"]["optimizer"]["params"]["lr"] == "3e-4"
    r = resolve(spec(doc["spec"]["deepspeed"]))
    assert r.optimizer.lr == 3e-4 and r.lr_schedule.params == {"warmup_max_lr": 3e-4, "warmup_num_steps": 10}


# ------------------------------------------------------------------------------ precision


def test_fp16_params_map_onto_precision() -> None:
    fp16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 12, "loss_scale_window": 500,
            "hysteresis": 3, "consecutive_hysteresis": True, "min_loss_scale": 2, "auto_cast": False}
    p = resolve(spec({"fp16": fp16})).precision
    assert (p.dtype, p.loss_scale, p.initial_scale_power, p.loss_scale_window, p.hysteresis,
            p.consecutive_hysteresis, p.min_loss_scale) == ("fp16", 0.0, 12, 500, 3, True, 2.0)
    p = resolve(spec({"fp16": {"enabled": True}})).precision  # DeepSpeed's defaults
    assert (p.loss_scale, p.initial_scale_power, p.loss_scale_window, p.hysteresis,
            p.consecutive_hysteresis, p.min_loss_scale) == (0.0, 16, 1000, 2, False, 1.0)
    assert resolve(spec({"fp16": {"enabled": True, "loss_scale": 128}})).precision.loss_scale == 128.0  # static


@pytest.mark.parametrize("key", ["bf16", "bfloat16"])
def test_bf16_and_legacy_bfloat16(key: str) -> None:
    p = resolve(spec({key: {"enabled": True}})).precision
    assert p.dtype == "bf16" and p.loss_scale is None


def test_bf16_wins_over_legacy_bfloat16_with_a_note() -> None:
    res = analyse(spec({"bf16": {"enabled": False}, "bfloat16": {"enabled": True}}))
    assert res.spec.precision.dtype == "fp32"
    assert any("bfloat16 is ignored" in n for n in res.notes)


def test_fp16_and_bf16_together_rejected_naming_both() -> None:
    only_problem(spec({"fp16": {"enabled": True}, "bf16": {"enabled": True}}), f"{DS}.fp16.enabled",
                 f"{DS}.fp16.enabled and {DS}.bf16.enabled are both true")
    only_problem(spec({"fp16": {"enabled": True}, "bfloat16": {"enabled": True}}), f"{DS}.fp16.enabled",
                 f"{DS}.bfloat16.enabled")


@pytest.mark.parametrize(
    ("fp16", "key", "needle"),
    [
        ({"enabled": True, "enable": True}, "enable", "did you mean 'enabled'?"),
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"enabled": True, "loss_scale": -1}, "loss_scale", ">= 0.0"),
        ({"enabled": True, "min_loss_scale": 0.5}, "min_loss_scale", "integer"),
        ({"enabled": True, "hysteresis": 0}, "hysteresis", ">= 1"),
        ({"enabled": True, "loss_scale_window": 0}, "loss_scale_window", ">= 1"),
        ({"enabled": True, "initial_scale_power": 65}, "initial_scale_power", "between 0 and 64"),
        ({"enabled": True, "consecutive_hysteresis": 1}, "consecutive_hysteresis", "true or false"),
    ],
)
def test_fp16_rejections_name_the_key(fp16: dict[str, Any], key: str, needle: str) -> None:
    only_problem(spec({"fp16": fp16}), f"{DS}.fp16.{key}", needle)


def test_precision_contradictions_name_both() -> None:
    only_problem(spec({"fp16": {"enabled": True}}, precision={"dtype": "bf16"}), "spec.precision.dtype",
                 "spec.precision.dtype=bf16 contradicts spec.deepspeed.fp16.enabled=true")
    only_problem(spec({"fp16": {"enabled": False}}, precision={"dtype": "fp16"}), "spec.precision.dtype",
                 "spec.precision.dtype=fp16 contradicts spec.deepspeed.fp16.enabled=false")
    only_problem(spec({"bf16": {"enabled": True}}, precision={"dtype": "fp32"}), "spec.precision.dtype",
                 "contradicts spec.deepspeed.bf16.enabled=true")
    only_problem(spec({"fp16": {"enabled": True, "loss_scale_window": 500}},
                      precision={"dtype": "fp16", "lossScaleWindow": 100}),
                 "spec.precision.lossScaleWindow",
                 "spec.precision.lossScaleWindow=100 contradicts spec.deepspeed.fp16.loss_scale_window=500")
    assert problems(spec({"bf16": {"enabled": False}}, precision={"dtype": "fp16"})) == {}


def test_fp16_keys_without_fp16_are_noted() -> None:
    res = analyse(spec({"fp16": {"enabled": False, "loss_scale": 128}, "bf16": {"enabled": True}}))
    assert res.problems == [] and res.spec.precision.loss_scale is None
    assert any("fp16.{loss_scale} has no effect" in n for n in res.notes)


# ------------------------------------------------------------------------------ ZeRO


@pytest.mark.parametrize(("stage", "strategy"), [(0, "ddp"), (1, "zero1"), (2, "zero2"), (3, "zero3")])
def test_zero_stage_to_strategy(stage: int, strategy: str) -> None:
    assert resolve(spec({"zero_optimization": {"stage": stage}})).parallelism.strategy == strategy


def test_zero_legacy_boolean_and_defaults() -> None:
    assert resolve(spec({"zero_optimization": True})).parallelism.strategy == "zero1"
    assert resolve(spec({"zero_optimization": False})).parallelism.strategy == "ddp"
    assert resolve(spec({"zero_optimization": {"overlap_comm": True}})).parallelism.strategy == "ddp"
    # No stage in the DeepSpeed config: the typed strategy stands, without contradiction.
    assert resolve(spec({"zero_optimization": {}}, parallelism={"strategy": "zero3"})).parallelism.strategy == "zero3"


@pytest.mark.parametrize("stage", [4, -1, "2", 2.5, True])
def test_zero_stage_outside_0_to_3_rejected(stage: Any) -> None:
    only_problem(spec({"zero_optimization": {"stage": stage}}), f"{DS}.zero_optimization.stage",
                 "must be 0, 1, 2 or 3")


def test_zero_unknown_key_and_contradiction() -> None:
    only_problem(spec({"zero_optimization": {"stage": 2, "stage3_prefetch_bucket": 1}}),
                 f"{DS}.zero_optimization.stage3_prefetch_bucket", "did you mean 'stage3_prefetch_bucket_size'?")
    only_problem(spec({"zero_optimization": {"stage": 2}}, parallelism={"strategy": "zero3"}),
                 "spec.parallelism.strategy",
                 "spec.parallelism.strategy=zero3 contradicts spec.deepspeed.zero_optimization.stage=2")


# ------------------------------------------------------------------------------ unsupported keys


UNSUPPORTED_CONFIG = {
    "train_batch_size": 8,
    "steps_per_print": 10,  # no-op
    "wall_clock_breakdown": False,  # no-op
    "activation_checkpointing": {"partition_activations": True},
    "flops_profiler": {"enabled": True},
    "gradient_predivide_factor": 1.0,  # no-op at its default
    "prescale_gradients": True,  # not at its default: unsupported
    "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "bias_correction": False, "set_grad_none": True}},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "offload_optimizer": {"device": "cpu"}},
    "fp16": {"enabled": True, "auto_cast": True, "fp16_master_weights_and_grads": True},
    "train_batch_sizes": 16,  # a typo: DeepSpeed ignores unknown top-level keys, we list them
}


def test_unsupported_keys_listed_by_name() -> None:
    assert unsupported_keys(UNSUPPORTED_CONFIG) == [
        "flops_profiler",
        "prescale_gradients",
        "optimizer.params.bias_correction",
        "fp16.fp16_master_weights_and_grads",
        "train_batch_sizes",
    ]
    assert unsupported_keys({}) == []
    assert unsupported_keys({"train_batch_size": "auto", "flops_profiler": "auto"}) == []


def test_unsupported_keys_become_notes() -> None:
    notes = deepspeed_notes(spec(UNSUPPORTED_CONFIG))
    assert f"{DS}.flops_profiler is not supported and is ignored" in notes
    assert f"{DS}.train_batch_sizes is not supported and is ignored (did you mean 'train_batch_size'?)" in notes
    # a known key at an unsupported value: no "did you mean" that repeats the written name
    assert f"{DS}.prescale_gradients=true is not supported (only false is) and is ignored" in notes
    assert not any("did you mean 'prescale_gradients'" in n for n in notes)
    # handled now: activation checkpointing (with a note for the knob) and CPU offload at stage 2
    assert any(n.startswith(f"{DS}.activation_checkpointing.partition_activations=true has no equivalent")
               for n in notes)
    res = analyse(spec(UNSUPPORTED_CONFIG))
    assert res.spec.training.activation_checkpointing is True
    assert res.spec.parallelism.offload == api.OffloadSpec(device="cpu", pin_memory=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetrain", *args], capture_output=True, text=True, timeout=120)


def test_validate_cli_lists_unsupported_keys(tmp_path: Path) -> None:
    f = tmp_path / "ds.yaml"
    f.write_text(yaml.safe_dump(job({"deepspeed": UNSUPPORTED_CONFIG})))
    result = _cli("validate", str(f))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for key in unsupported_keys(UNSUPPORTED_CONFIG):
        assert f"{f}: note: {DS}.{key}" in "\n".join(lines) and "is not supported" in result.stdout, key
    assert "steps_per_print" not in result.stdout and "overlap_comm" not in result.stdout
    assert lines[-1] == f"{f}: TrainingJob t is valid"


def test_validate_cli_rejects_bad_deepspeed_naming_keys(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(job({"deepspeed": {
        "fp16": {"enabled": True}, "bf16": {"enabled": True}, "zero_optimization": {"stage": 5},
        "optimizer": {"type": "Lamb"}, "scheduler": {"type": "WarmupCosineLR"},
        "train_batch_size": 10, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}})))
    result = _cli("validate", str(f))
    assert result.returncode == 1
    out = result.stdout
    for path in ("fp16.enabled", "zero_optimization.stage", "optimizer.type", "scheduler.params.total_num_steps",
                 "train_batch_size"):
        assert f"{f}: {DS}.{path}: " in out, (path, out)
    assert "Traceback" not in out + result.stderr


# ------------------------------------------------------------------------------ integration


def test_registered_with_validate() -> None:
    assert deepspeed_problems in validate.SEMANTIC_CHECKS
    assert len([c for c in validate.SEMANTIC_CHECKS if c.__name__ == "deepspeed_problems"]) == 1
    probs = validate_object(job({"deepspeed": {"train_batch_size": 8, "zero_optimization": {"stage": 7}}}))
    assert [p.path for p in probs] == [f"{DS}.zero_optimization.stage"]
    assert all(p.fix for p in probs)


def test_deepspeed_example_resolves() -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "deepspeed.yaml").read_text())
    assert validate_object(doc) == []
    s = api.TrainingJob.model_validate(doc).spec
    res = analyse(s)
    r = res.spec
    assert res.world_size == 16 and res.gradient_accumulation_steps == 2
    assert (r.training.global_batch_size, r.training.micro_batch_size, r.training.gradient_clipping) == (256, 8, 1.0)
    assert (r.optimizer.type, r.optimizer.lr, r.optimizer.betas, r.optimizer.weight_decay) == (
        "AdamW", 3e-4, [0.9, 0.95], 0.1)
    assert (r.precision.dtype, r.parallelism.strategy, r.lr_schedule.type) == ("bf16", "zero2", "WarmupDecayLR")
    assert res.unsupported == []


def test_resolve_error_is_a_value_error_listing_problems() -> None:
    with pytest.raises(ValueError) as info:
        resolve(spec({"fp16": {"enabled": True}, "bf16": {"enabled": True}, "optimizer": {"type": "Lion"}}))
    assert isinstance(info.value, DeepSpeedConfigError)
    assert {p.path for p in info.value.problems} == {f"{DS}.fp16.enabled", f"{DS}.optimizer.type"}
    with pytest.raises(ValueError, match="world_size"):
        resolve(spec(), world_size=0)


def test_plan_counts_cpu_offload_in_host_memory() -> None:
    from kubetrain.tools.plan import plan

    body = {"workers": {"replicas": 2, "gpusPerWorker": 8}, "model": {"preset": "1.3B"},
            "training": {"globalBatchSize": 64}, "precision": {"dtype": "bf16"}}
    ds = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    base = plan(api.TrainingJobSpec.model_validate({**body, "parallelism": {"strategy": "zero3"}}), gpu="H100")
    off = plan(api.TrainingJobSpec.model_validate({**body, "deepspeed": ds}), gpu="H100")
    b, o = base.memory_of("zero3"), off.memory_of("zero3")
    assert b is not None and o is not None
    moved = b.params_bytes + b.grads_bytes + b.optimizer_bytes
    assert o.total_bytes == b.total_bytes - moved and o.params_bytes == o.grads_bytes == o.optimizer_bytes == 0
    assert off.host_bytes_per_node == moved * 8 and base.host_bytes_per_node is None
    assert any("host memory" in n and "per node of 8 processes" in n for n in off.notes)


def test_validate_explain_and_notes_next_to_errors(tmp_path: Path) -> None:
    f = tmp_path / "hf.yaml"
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "prescale_gradients": True,
          "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    f.write_text(yaml.safe_dump(job({"workers": on(2, 2), "training": {"globalBatchSize": 16, "microBatchSize": 2},
                                     "optimizer": {"lr": 2e-4}, "deepspeed": ds})))
    result = _cli("validate", "--explain", str(f))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"{f}: explain: {DS}.optimizer.params.lr = auto -> spec.optimizer.lr = 0.0002 (auto)" in out
    assert f"{f}: explain: {DS}.gradient_accumulation_steps = auto -> derived gradient accumulation = 2 (auto)" in out
    assert f'{f}: explain: {DS}.zero_optimization.offload_param.device = cpu -> spec.parallelism.offload = ' \
           '{"device": "cpu", "pinMemory": true} (written)' in out
    assert f"{f}: explain: {DS}.prescale_gradients = true -> ignored" in out
    assert f"{f}: explain: spec.training.activationCheckpointing = false (default)" in out
    # an error and the notes together: the note is not hidden by the error
    ds["amp"] = {"enabled": True}
    f.write_text(yaml.safe_dump(job({"workers": on(2, 2), "training": {"globalBatchSize": 16}, "deepspeed": ds})))
    result = _cli("validate", str(f))
    assert result.returncode == 1
    assert f"{f}: {DS}.amp: the NVIDIA Apex AMP integration was removed" in result.stdout
    assert f"{f}: note: {DS}.prescale_gradients=true is not supported (only false is) and is ignored" in result.stdout
