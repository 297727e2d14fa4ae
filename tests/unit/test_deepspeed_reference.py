"""`kubetrain.api.deepspeed` against DeepSpeed 0.19.8 itself (its config classes, on CPU).

25 DeepSpeed configs taken verbatim from public repositories (tests/unit/data/deepspeed_configs/, sources
in the README there). For each, the job's typed fields stand in for the Hugging Face TrainingArguments, and
the reference fills the config's "auto" values from those typed fields the way the Hugging Face
integration does -- written here from the typed values, independently of Kubetrain's code -- then hands the
config to DeepSpeed's `DeepSpeedConfig` at the same data-parallel size. Kubetrain must give the same
verdict, and where both accept, the same batch sizes, clipping, ZeRO stage, precision and loss-scale
settings, offload, optimizer and scheduler parameters. The one allowed difference: a config DeepSpeed's
parser accepts but Kubetrain does not implement (Lamb, OneBitAdam) is refused with "not supported".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetrain import api
from kubetrain.api.deepspeed import analyse, gather_16bit_weights_on_model_save
from kubetrain.api.deepspeed.keys import REMOVED_TOP
from tests.unit import deepspeed_ref

DATA = Path(__file__).parent / "data" / "deepspeed_configs"
CONFIGS = sorted(p.name for p in DATA.glob("*.json"))
WORLD = 4  # 2 workers x 2 processes
D_MODEL = 64  # the tiny preset's hidden size (bucket-size "auto" values)
STAGE = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}

# Configs DeepSpeed's parser accepts that use what Kubetrain refuses as unsupported: path -> needle.
UNSUPPORTED = {
    "dsexamples_cifar_ds_config_lamb.json": ("spec.deepspeed.optimizer.type", "not supported"),
    "dsexamples_bing_bert_onebit_config_seq128.json": ("spec.deepspeed.optimizer.type", "not supported"),
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def typed_job(ds: dict[str, Any]) -> dict[str, Any]:
    """The typed fields of the job around a config (the stand-in for TrainingArguments)."""
    training: dict[str, Any] = {"maxSteps": 5, "gradientClipping": 0.5}
    writes_batch = any(isinstance(ds.get(k), int) for k in ("train_batch_size", "train_micro_batch_size_per_gpu"))
    if not writes_batch:
        # accumulation written as 1 (Accelerate templates): micro 2 x 1 x 4 processes
        training.update(globalBatchSize=8 if ds.get("gradient_accumulation_steps") == 1 else 16, microBatchSize=2)
    spec: dict[str, Any] = {"workers": {"replicas": 2, "gpusPerWorker": 2}, "training": training, "deepspeed": ds}
    # typed values only where the config says "auto" (elsewhere both given and different is a contradiction)
    opt_params = (ds.get("optimizer") or {}).get("params") or {}
    typed_opt = {"lr": 2e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
    spec["optimizer"] = {("weightDecay" if k == "weight_decay" else k): v for k, v in typed_opt.items()
                         if opt_params.get(k) == "auto"}
    if ((ds.get("scheduler") or {}).get("params") or {}).get("warmup_num_steps") == "auto":
        spec["lrSchedule"] = {"params": {"warmup_num_steps": 2}}
    enabled = {k: ds[k].get("enabled") for k in ("fp16", "bf16", "bfloat16") if isinstance(ds.get(k), dict)}
    if "auto" in enabled.values() and True not in enabled.values():
        auto_bf16 = "auto" in (enabled.get("bf16"), enabled.get("bfloat16"))
        spec["precision"] = {"dtype": "bf16" if auto_bf16 else "fp16"}
    if ds.get("gradient_clipping") != "auto":
        del training["gradientClipping"]
    return spec


def hf_fill(ds: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The config with "auto" replaced as the Hugging Face integration would from the typed fields."""
    t = spec["training"]
    o = {"lr": 3e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weightDecay": 0.01, **spec["optimizer"]}
    dtype = spec.get("precision", {}).get("dtype", "fp32")
    g, m = t.get("globalBatchSize"), t.get("microBatchSize")
    values = {
        "train_batch_size": g, "train_micro_batch_size_per_gpu": m,
        "gradient_accumulation_steps": g // (m * WORLD) if g and m else None,
        "gradient_clipping": t.get("gradientClipping", 1.0),
        "lr": o["lr"], "betas": o["betas"], "eps": o["eps"], "weight_decay": o["weightDecay"],
        "warmup_min_lr": 0.0, "warmup_max_lr": o["lr"], "warmup_num_steps": 2, "total_num_steps": t["maxSteps"],
        "reduce_bucket_size": D_MODEL * D_MODEL, "stage3_prefetch_bucket_size": int(0.9 * D_MODEL * D_MODEL),
        "stage3_param_persistence_threshold": 10 * D_MODEL, "stage3_gather_16bit_weights_on_model_save": False,
    }

    def put(d: Any, parent: str = "") -> Any:
        if isinstance(d, dict):
            out = {}
            for k, v in d.items():
                if v == "auto" and k == "enabled":
                    out[k] = (parent == "fp16" and dtype == "fp16") or (parent in ("bf16", "bfloat16") and
                                                                        dtype == "bf16")
                elif v == "auto":
                    out[k] = values[k]
                else:
                    out[k] = put(v, k)
            return out
        return d

    filled: dict[str, Any] = put(ds)
    return filled


def deepspeed_verdict(ds: dict[str, Any], world: int) -> tuple[Any, str]:
    try:
        return deepspeed_ref.config(ds, world), ""
    except Exception as exc:  # DeepSpeed raises AssertionError, ValueError, pydantic's ValidationError, ...
        return None, f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("name", CONFIGS)
def test_real_config_matches_deepspeed(name: str) -> None:
    ds = load(name)
    body = typed_job(ds)
    spec = api.TrainingJobSpec.model_validate(body)
    res = analyse(spec)
    theirs, why = deepspeed_verdict(hf_fill(ds, body), WORLD)
    ours = {p.path: f"{p.message}; fix: {p.fix}" for p in res.problems}
    if theirs is None:
        assert ours, f"DeepSpeed rejects {name} ({why}) but Kubetrain accepts it"
        if "ValidationError" in why:  # pydantic names the field: so must we
            field = why.split("\n")[1].strip()
            assert any(field in path for path in ours), (field, ours)
        return
    if name in UNSUPPORTED:
        path, needle = UNSUPPORTED[name]
        assert set(ours) == {path} and needle in ours[path], ours
        return
    assert ours == {}, f"DeepSpeed accepts {name}; Kubetrain says {ours}"
    _same_values(res, theirs, ds)


def _same_values(res: Any, c: Any, ds: dict[str, Any]) -> None:
    r = res.spec
    micro = r.training.micro_batch_size or -(-r.training.global_batch_size // WORLD)
    assert (r.training.global_batch_size, micro, res.gradient_accumulation_steps) == (
        c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps)
    assert r.training.gradient_clipping == c.gradient_clipping
    assert r.parallelism.strategy == STAGE[int(c.zero_optimization_stage)]
    assert (r.precision.dtype == "fp16") is bool(c.float16_config.enabled)
    assert (r.precision.dtype == "bf16") is bool(c.bfloat16_config.enabled)
    if r.precision.dtype == "fp16":
        f = c.float16_config
        assert (r.precision.loss_scale, r.precision.initial_scale_power, r.precision.loss_scale_window,
                r.precision.hysteresis, r.precision.consecutive_hysteresis, r.precision.min_loss_scale) == (
            f.loss_scale, f.initial_scale_power, f.loss_scale_window, f.hysteresis, f.consecutive_hysteresis,
            f.min_loss_scale)
    z = c.zero_config
    stage3 = int(c.zero_optimization_stage) == 3
    opt_cpu = z.offload_optimizer is not None and z.offload_optimizer.device == "cpu"
    par_cpu = stage3 and z.offload_param is not None and z.offload_param.device == "cpu"
    offload = r.parallelism.offload
    assert (offload is not None and offload.device == "cpu") is (opt_cpu or par_cpu)
    if offload is not None and offload.device == "cpu":
        block = z.offload_param if par_cpu else z.offload_optimizer
        assert offload.pin_memory is block.pin_memory
    assert gather_16bit_weights_on_model_save(ds) is (z.gather_16bit_weights_on_model_save is True) or \
        z.gather_16bit_weights_on_model_save is False
    if c.optimizer_name is not None:
        params = c.optimizer_params or {}
        assert r.optimizer.lr == params.get("lr", r.optimizer.lr)
        for key, ours in (("betas", r.optimizer.betas), ("eps", r.optimizer.eps),
                          ("weight_decay", r.optimizer.weight_decay)):
            if key in params:
                assert ours == (list(params[key]) if key == "betas" else params[key]), key
    if c.scheduler_name is not None:
        assert r.lr_schedule.type == c.scheduler_name
        for key, value in (c.scheduler_params or {}).items():
            assert r.lr_schedule.params[key] == value, key


# ------------------------------------------------------------------ batch arithmetic, exhaustively


BATCH_CASES = [
    {k: v for k, v in (("train_batch_size", t), ("train_micro_batch_size_per_gpu", m),
                       ("gradient_accumulation_steps", a)) if v is not None}
    for t in (None, 1, 6, 8, 12, 30, 64) for m in (None, 1, 3, 4) for a in (None, 1, 2, 3)
    if (t, m) != (None, None)
]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_batch_arithmetic_verdicts_equal_deepspeeds(world: int) -> None:
    """Every combination of the three batch keys at the job's own world size: the same accept/reject, and
    the same three numbers when accepted."""
    mismatches: list[tuple[Any, ...]] = []
    for ds in BATCH_CASES:
        spec = api.TrainingJobSpec.model_validate({"workers": {"replicas": world}, "deepspeed": ds})
        res = analyse(spec)
        theirs, why = deepspeed_verdict(ds, world)
        if theirs is None:
            if not res.problems:
                mismatches.append((ds, "DeepSpeed rejects", why))
            continue
        if res.problems:
            mismatches.append((ds, "Kubetrain rejects", [str(p) for p in res.problems]))
            continue
        t = res.spec.training
        micro = t.micro_batch_size or (t.global_batch_size or 0) // world
        got = (t.global_batch_size, micro, res.gradient_accumulation_steps)
        want = (theirs.train_batch_size, theirs.train_micro_batch_size_per_gpu, theirs.gradient_accumulation_steps)
        if got != want:
            mismatches.append((ds, got, want))
    assert mismatches == []


@pytest.mark.parametrize("key", sorted(REMOVED_TOP))
def test_removed_blocks_are_refused_like_deepspeed(key: str) -> None:
    ds = {"train_batch_size": 8, key: {"enabled": True}}
    theirs, why = deepspeed_verdict(ds, 1)
    assert theirs is None and "removed" in why
    res = analyse(api.TrainingJobSpec.model_validate({"deepspeed": ds}))
    assert [p.path for p in res.problems] == [f"spec.deepspeed.{key}"]
    assert "removed" in res.problems[0].message


def test_offload_device_none_is_silent_and_nvme_is_an_error() -> None:
    base = {"train_batch_size": 8, "zero_optimization": {"stage": 3}}
    none = dict(base, zero_optimization={"stage": 3, "offload_optimizer": {"device": "none"},
                                         "offload_param": {"device": "none"}})
    res = analyse(api.TrainingJobSpec.model_validate({"deepspeed": none}))
    assert res.problems == [] and res.notes == [] and res.spec.parallelism.offload is None
    assert deepspeed_verdict(none, 1)[0] is not None
    nvme = dict(base, zero_optimization={"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/x"}})
    res = analyse(api.TrainingJobSpec.model_validate({"deepspeed": nvme}))
    assert [p.path for p in res.problems] == ["spec.deepspeed.zero_optimization.offload_param.device"]
    assert "NVMe" in res.problems[0].message and "device: cpu" in res.problems[0].fix


@pytest.mark.parametrize("stage", [0, 1])
def test_offload_without_an_fsdp_equivalent_is_a_clear_error(stage: int) -> None:
    ds = {"train_batch_size": 8, "zero_optimization": {"stage": stage, "offload_optimizer": {"device": "cpu"}}}
    res = analyse(api.TrainingJobSpec.model_validate({"deepspeed": ds}))
    assert [p.path for p in res.problems] == ["spec.deepspeed.zero_optimization.offload_optimizer"]
    assert "stage 2 or 3" in res.problems[0].fix
