"""`spec.deepspeed`: a DeepSpeed JSON config, taken as-is and meaning what DeepSpeed means.

The DeepSpeed keys are mapped onto the typed fields with DeepSpeed's names, semantics and
defaults (checked against deepspeed/runtime/config.py, precision_config.py, zero/config.py
and engine.py of DeepSpeed 0.19.6):

================================  ==========================================================
DeepSpeed key                     typed field
================================  ==========================================================
train_batch_size                  training.globalBatchSize
train_micro_batch_size_per_gpu    training.microBatchSize
gradient_accumulation_steps       (derived: globalBatchSize / (microBatchSize x world size))
gradient_clipping                 training.gradientClipping (DeepSpeed >= 0.19.3 defaults to
                                  1.0, earlier versions to 0.0 = off; Kubetrain: 1.0)
optimizer.type / .params          optimizer.* ("Adam" is AdamW unless params.adam_w_mode is
                                  false; "AdamW" is always AdamW; "SGD" is torch.optim.SGD)
scheduler.type / .params          lrSchedule.* (DeepSpeed's five + torch's ReduceLROnPlateau)
fp16.*                            precision.dtype fp16 + the loss-scale fields
bf16.enabled (legacy "bfloat16")  precision.dtype bf16
zero_optimization.stage 0..3      parallelism.strategy ddp / zero1 / zero2 / zero3
================================  ==========================================================

Resolution of each typed field: the value written in the typed field, else the DeepSpeed
key, else the default -- DeepSpeed's default inside a section the DeepSpeed config has
(e.g. an `optimizer` section without `lr` means FusedAdam's lr 1e-3), Kubetrain's otherwise
(globalBatchSize 8, AdamW lr 3e-4 betas [0.9, 0.999] eps 1e-8 weightDecay 0.01 (0 for
SGD), gradientClipping 1.0, fp32, ddp, Constant). A typed field and a DeepSpeed key both
given with different values is an error naming both. "auto" (the Hugging Face Trainer
placeholder) counts as not given.

Keys fall in four groups: mapped (above); no-op (accepted, listed in `NO_OP_KEYS`:
logging, profiling and performance knobs that never change what is computed, some only
at their default value); rejected (what DeepSpeed itself rejects, by name); and
unsupported -- everything else, accepted but ignored and always listed by
`unsupported_keys`, in `kubetrain validate`'s notes and in the operator's condition
message (`deepspeed_notes`).

Batch sizes follow DeepSpeed's `_set_batch_related_parameters` / `_batch_assertion`:
train = micro x accumulation x world size; any two given derive the third, all three must
agree, train alone means no accumulation, micro alone means train = micro x world size.
The world size is the one passed to `resolve`, else the job's nominal size
(workers.replicas x procsPerWorker). What is fixed there -- the global batch and the
micro batch -- stays fixed when an elastic job runs at another size; the accumulation is
re-derived. Any world size up to globalBatchSize works: the trainer splits an uneven global
batch exactly (ranks take G // W or G // W + 1 samples, each micro-batch's loss weighted by
its samples), so the only divisibility rule kept is DeepSpeed's own on an explicit triple.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain import api
from kubetrain.api.problems import Problem
from kubetrain.api.schedules import SCHEDULE_TYPES, ScheduleError, make_schedule

__all__ = [
    "KUBETRAIN_DEFAULTS",
    "MAPPED_KEYS",
    "NO_OP_KEYS",
    "DeepSpeedConfigError",
    "Resolution",
    "analyse",
    "deepspeed_notes",
    "deepspeed_problems",
    "resolve",
    "unsupported_keys",
    "valid_world_sizes",
]

DS = "spec.deepspeed"

# Kubetrain's own defaults (used where neither the typed field nor the DeepSpeed config says).
KUBETRAIN_DEFAULTS: dict[str, Any] = {
    "globalBatchSize": 8,
    "optimizer.type": "AdamW",
    "optimizer.lr": 3e-4,
    "optimizer.betas": [0.9, 0.999],
    "optimizer.eps": 1e-8,
    "optimizer.weightDecay": 0.01,  # 0.0 for SGD
    "optimizer.momentum": 0.0,
    "optimizer.nesterov": False,
    # Equal to DeepSpeed's GRADIENT_CLIPPING_DEFAULT since 0.19.3 (it was 0.0, no clipping, before).
    "gradientClipping": 1.0,
    "precision.dtype": "fp32",
    "parallelism.strategy": "ddp",
    "lrSchedule.type": "Constant",
}

# DeepSpeed's fp16 defaults (precision_config.DeepSpeedFP16Config), equal to Kubetrain's.
FP16_DEFAULTS: dict[str, Any] = {
    "loss_scale": 0.0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1.0,
}
_FP16_TYPED = {  # DeepSpeed fp16 key -> (PrecisionSpec attribute, wire name)
    "loss_scale": ("loss_scale", "lossScale"),
    "initial_scale_power": ("initial_scale_power", "initialScalePower"),
    "loss_scale_window": ("loss_scale_window", "lossScaleWindow"),
    "hysteresis": ("hysteresis", "hysteresis"),
    "consecutive_hysteresis": ("consecutive_hysteresis", "consecutiveHysteresis"),
    "min_loss_scale": ("min_loss_scale", "minLossScale"),
}

# Dotted DeepSpeed keys that set typed fields.
MAPPED_KEYS: frozenset[str] = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "optimizer.type",
        "optimizer.params.lr",
        "optimizer.params.betas",
        "optimizer.params.eps",
        "optimizer.params.weight_decay",
        "optimizer.params.momentum",
        "optimizer.params.nesterov",
        "optimizer.params.adam_w_mode",
        "optimizer.params.torch_adam",  # picks the implementation; only its weight_decay default matters
        "scheduler.type",
        "scheduler.params",
        "fp16.enabled",
        *(f"fp16.{k}" for k in FP16_DEFAULTS),
        "bf16.enabled",
        "bfloat16.enabled",
        "zero_optimization",  # the legacy boolean form: true = stage 1
        "zero_optimization.stage",
    }
)

_ANY = None  # a no-op key whatever its value
# Dotted DeepSpeed keys that are accepted and change nothing Kubetrain computes: logging,
# profiling and performance knobs of DeepSpeed's own implementation. A tuple lists the
# values at which the key is a no-op (DeepSpeed's default); other values are unsupported.
NO_OP_KEYS: dict[str, tuple[Any, ...] | None] = {
    "steps_per_print": _ANY,  # Kubetrain logs every training.logEvery steps
    "wall_clock_breakdown": _ANY,
    "memory_breakdown": _ANY,
    "dump_state": _ANY,
    "zero_allow_untested_optimizer": _ANY,
    "zero_force_ds_cpu_optimizer": _ANY,
    "prescale_gradients": (False,),
    "gradient_predivide_factor": (1, 1.0),
    "gradient_allreduce_op": ("mean",),
    "sparse_gradients": (False,),
    "optimizer.legacy_fusion": _ANY,
    "optimizer.params.bias_correction": (True,),
    "optimizer.params.amsgrad": (False,),
    "optimizer.params.set_grad_none": _ANY,
    "optimizer.params.foreach": _ANY,
    "optimizer.params.fused": _ANY,
    "optimizer.params.capturable": _ANY,
    "optimizer.params.differentiable": (False,),
    "optimizer.params.maximize": (False,),
    "optimizer.params.decoupled_weight_decay": (False,),
    "optimizer.params.dampening": (0, 0.0),
    "fp16.auto_cast": _ANY,  # the forward always runs under torch.autocast
    "fp16.fp16_master_weights_and_grads": (False,),
    "bf16.immediate_grad_update": _ANY,
    "bf16.check_grad_overflow": _ANY,  # non-finite steps are always skipped (precision.maxConsecutiveNonFinite)
    "bf16.bf16_master_weights_and_grads": (False,),
    "bf16.bf16_optimizer_states": (False,),
    **{
        f"zero_optimization.{k}": _ANY
        for k in (
            "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
            "allgather_partitions", "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights",
            "sub_group_size", "prefetch_bucket_size", "stage3_prefetch_bucket_size", "param_persistence_threshold",
            "stage3_param_persistence_threshold", "model_persistence_threshold",
            "stage3_model_persistence_threshold", "max_live_parameters", "stage3_max_live_parameters",
            "max_reuse_distance", "stage3_max_reuse_distance", "module_granularity_threshold",
            "stage3_module_granularity_threshold", "use_all_reduce_for_fetch_params",
            "stage3_use_all_reduce_for_fetch_params", "allgather_sequential", "stage3_allgather_sequential",
            "ignore_unused_parameters", "round_robin_gradients", "memory_efficient_linear",
            "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks",
        )
    },
}
for _k in ("immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads", "bf16_optimizer_states"):
    NO_OP_KEYS[f"bfloat16.{_k}"] = NO_OP_KEYS[f"bf16.{_k}"]

# Every key DeepSpeed's pydantic sections accept (extra="forbid": anything else is an error there).
_FP16_KEYS = frozenset({"enabled", "auto_cast", *FP16_DEFAULTS, "fp16_master_weights_and_grads"})
_BF16_KEYS = frozenset(
    {"enabled", "immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads",
     "bf16_optimizer_states"}
)
_ZERO_KEYS = frozenset(
    {k.split(".", 1)[1] for k in NO_OP_KEYS if k.startswith("zero_optimization.")}
    | {
        "stage", "elastic_checkpoint", "offload_param", "offload_optimizer", "zenflow", "cpu_offload_param",
        "cpu_offload_use_pin_memory", "cpu_offload", "gather_16bit_weights_on_model_save",
        "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
        "legacy_stage1", "zero_hpz_partition_size", "zero_quantized_weights",
        "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "zeropp_loco_param",
        "mics_shard_size", "mics_hierarchical_params_gather", "pipeline_loading_checkpoint",
        "save_muon_momentum_buffer_in_memory", "leaf_module",
    }
)

_STRATEGY_OF_STAGE = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}

# DeepSpeed's own optimizers (config.DEEPSPEED_OPTIMIZERS; matched case-insensitively).
_DEEPSPEED_OPTIMIZERS = (
    "adagrad", "adam", "adamw", "lamb", "onebitadam", "onebitlamb", "zerooneadam", "muadam", "muadamw",
    "musgd", "lion", "muon",
)
# Other names DeepSpeed resolves as torch.optim classes (case-sensitive).
_TORCH_OPTIMIZERS = (
    "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "ASGD", "LBFGS", "NAdam", "RAdam",
    "RMSprop", "Rprop", "SGD", "SparseAdam",
)
# Keyword arguments of what DeepSpeed builds: FusedAdam (default), torch.optim.Adam/AdamW
# (params.torch_adam: true), torch.optim.SGD. Anything else is a TypeError in DeepSpeed.
_FUSED_ADAM_PARAMS = frozenset(
    {"lr", "bias_correction", "betas", "eps", "weight_decay", "amsgrad", "set_grad_none"}
)
_TORCH_ADAM_PARAMS = frozenset(
    {"lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable", "differentiable",
     "fused", "decoupled_weight_decay"}
)
_SGD_PARAMS = frozenset(
    {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable", "fused"}
)
# DeepSpeed schedulers (lr_schedules.VALID_LR_SCHEDULES) plus the one torch scheduler we implement.
_DS_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest", "ReduceLROnPlateau")
_TORCH_SCHEDULERS = (
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
    "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "CyclicLR", "CosineAnnealingWarmRestarts",
    "OneCycleLR", "PolynomialLR", "LRScheduler",
)
# Schedules that set the lr themselves (the optimizer's lr is not used).
_SETS_OWN_LR = {"WarmupDecayLR": "warmup_max_lr", "OneCycle": "cycle_max_lr", "LRRangeTest": "lr_range_test_min_lr"}

# Known top-level keys, for "did you mean" on unsupported ones, and hints for common sections.
_KNOWN_TOP = sorted(
    {k.split(".", 1)[0] for k in MAPPED_KEYS | NO_OP_KEYS.keys()} | {"optimizer", "scheduler", "fp16", "bf16"}
)
_HINTS = {
    "activation_checkpointing": "use spec.training.activationCheckpointing",
    "elasticity": "use spec.workers.minReplicas / maxReplicas",
    "checkpoint": "see spec.checkpoint",
    "amp": "use fp16 or bf16",
    "torch_autocast": "use fp16 or bf16",
    "tensor_parallel": "see spec.parallelism.tensorParallel",
}

# Batch keys are strict integers (32.0 is rejected); DeepSpeed's pydantic int fields accept 16.0.
_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class DeepSpeedConfigError(ValueError):
    """A spec whose DeepSpeed mapping fails; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class Resolution:
    """Everything `resolve` works out, without raising."""

    spec: api.TrainingJobSpec  # the resolved spec (valid only when `problems` is empty)
    world_size: int  # the world size the batch rule was applied at
    nominal: bool  # True when that is workers.replicas x procs (no world_size given)
    gradient_accumulation_steps: int | None  # at that world size; None when unknown
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ helpers


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


# YAML 1.2 / go-yaml numbers that PyYAML (YAML 1.1) leaves as strings, e.g. 3e-4 or 1.0e5.
# The API server (sigs.k8s.io/yaml) stores them as numbers, so `validate` must read them so too.
_YAML12_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$")


def _normalise(value: Any, path: str, auto: list[str]) -> Any:
    """Drop "auto" values (recording their paths) and read exponent strings as numbers."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}"
            if isinstance(v, str) and v == "auto":
                auto.append(sub)
                continue
            out[str(k)] = _normalise(v, sub, auto)
        return out
    if isinstance(value, list):
        return [_normalise(v, path, auto) for v in value]
    if isinstance(value, str) and _YAML12_FLOAT.match(value):
        return float(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _close(name: str, options: Iterable[str]) -> str:
    options = list(options)
    same_but_case = [o for o in options if o.lower() == name.lower()]
    near = same_but_case or difflib.get_close_matches(name, options, n=1)
    return f"did you mean '{near[0]}'?" if near else ""


def _nominal(spec: api.TrainingJobSpec) -> int:
    return spec.workers.replicas * spec.workers.procs


# ------------------------------------------------------------------------ the mapping


class _Mapper:
    def __init__(self, spec: api.TrainingJobSpec, world_size: int | None) -> None:
        self.spec = spec
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.auto: list[str] = []
        raw = spec.deepspeed or {}
        self.ds: dict[str, Any] = _normalise(raw, DS, self.auto) if isinstance(raw, Mapping) else {}
        self.nominal = world_size is None
        self.world = _nominal(spec) if world_size is None else world_size

    # -- generic ---------------------------------------------------------------------

    def problem(self, path: str, message: str, fix: str) -> None:
        self.problems.append(Problem(path, message, fix))

    def section(self, key: str) -> dict[str, Any] | None:
        value = self.ds.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(f"{DS}.{key}", f"must be an object (got {_fmt(value)})", f"write {key}: {{...}}")
            return None
        return dict(value)

    def pick(self, typed_path: str, typed: Any, ds_path: str, ds_value: Any, *, why: str = "",
             shown: Any = None) -> Any:
        """Typed value, else DeepSpeed value; both given and different is a contradiction.
        `shown` is the DeepSpeed value as written, when it differs from what it means."""
        if typed is not None and ds_value is not None and not _same(typed, ds_value):
            self.problem(
                typed_path,
                f"{typed_path}={_fmt(typed)} contradicts {ds_path}={_fmt(ds_value if shown is None else shown)}{why}",
                "remove one of them or make them equal",
            )
        return typed if typed is not None else ds_value

    def check_keys(self, key: str, section: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for name in section:
            if name not in allowed:
                hint = _close(name, allowed)
                self.problem(
                    f"{DS}.{key}.{name}",
                    f"unknown key '{name}' (DeepSpeed rejects it: {key} takes {', '.join(sorted(allowed))})",
                    hint or "remove it",
                )

    def number(self, path: str, value: Any, *, ge: float | None = None, gt: float | None = None,
               lt: float | None = None) -> float | None:
        if value is None:
            return None
        if not _is_number(value):
            self.problem(path, f"must be a number (got {_fmt(value)})", "write a number")
            return None
        for ok, op, bound in ((ge is None or value >= ge, ">=", ge), (gt is None or value > gt, ">", gt),
                              (lt is None or value < lt, "<", lt)):
            if not ok:
                self.problem(path, f"must be {op} {bound} (got {_fmt(value)})", f"set a value {op} {bound}")
                return None
        return float(value)

    def integer(self, path: str, value: Any, *, ge: int, le: int | None = None) -> int | None:
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer() and not path.endswith(_BATCH_KEYS):
            value = int(value)  # pydantic (DeepSpeed's sections) accepts 16.0 for an int field
        if not _is_int(value):
            self.problem(path, f"must be an integer (got {_fmt(value)})", f"write a whole number >= {ge}")
            return None
        if value < ge or (le is not None and value > le):
            bounds = f"between {ge} and {le}" if le is not None else f">= {ge}"
            self.problem(path, f"must be {bounds} (got {value})", f"set a value {bounds}")
            return None
        return int(value)

    def boolean(self, path: str, value: Any) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false (got {_fmt(value)})", "write true or false")
            return None
        return value

    # -- batch sizes -------------------------------------------------------------------

    def batch(self) -> tuple[int, int | None, int | None, str]:
        """(globalBatchSize, microBatchSize or None = G / world, accumulation, global's path)."""
        t = self.spec.training
        before = len(self.problems)
        ds_t = self.integer(f"{DS}.train_batch_size", self.ds.get("train_batch_size"), ge=1)
        ds_m = self.integer(f"{DS}.train_micro_batch_size_per_gpu", self.ds.get("train_micro_batch_size_per_gpu"),
                            ge=1)
        ds_a = self.integer(f"{DS}.gradient_accumulation_steps", self.ds.get("gradient_accumulation_steps"), ge=1)
        if len(self.problems) > before:  # a bad batch key: no rule to apply
            return (t.global_batch_size or KUBETRAIN_DEFAULTS["globalBatchSize"], t.micro_batch_size, None,
                    "spec.training.globalBatchSize")

        def source(typed: int | None, typed_path: str, ds_value: int | None, ds_path: str) -> tuple[int | None, str]:
            value = self.pick(typed_path, typed, ds_path, ds_value)
            return value, (typed_path if typed is not None else ds_path)

        T, t_name = source(t.global_batch_size, "spec.training.globalBatchSize", ds_t, f"{DS}.train_batch_size")
        M, m_name = source(t.micro_batch_size, "spec.training.microBatchSize", ds_m,
                           f"{DS}.train_micro_batch_size_per_gpu")
        A, a_name = ds_a, f"{DS}.gradient_accumulation_steps"
        W = self.world
        where = f"world size {W}"
        if self.nominal:
            w = self.spec.workers
            where += f" ({w.replicas} worker{'s' if w.replicas != 1 else ''} x {w.procs} procsPerWorker)"

        def accumulation(total: int, micro: int) -> int:
            """Micro-steps per optimizer step at W: the largest rank share, ceil(total / W), in
            micro-batches of at most ``micro`` (uneven splits are exact: Kubetrain weights by samples)."""
            return math.ceil(math.ceil(total / W) / micro)

        def too_small(total: int, name: str) -> bool:
            if total >= W:
                return False
            self.problem(
                name,
                f"{name}={total} is smaller than the {where}: every process needs at least one sample per step",
                f"set {name} to at least {W}, or run fewer processes",
            )
            return True

        if T is not None and M is not None and A is not None:
            # DeepSpeed's own assertion on an explicit triple: it must hold at this world size or at
            # the job's nominal size (an elastic job validated there runs elsewhere, re-deriving A).
            if M * A * W != T and M * A * _nominal(self.spec) != T:
                self.problem(
                    t_name,
                    f"{t_name}={T} must equal {m_name}={M} x {a_name}={A} x {where} = {M * A * W} "
                    f"(DeepSpeed's train = micro x accumulation x world size)",
                    f"set {t_name} to {M * A * W}, or leave one of the three out so that it is derived",
                )
                return T, M, A, t_name
            if too_small(T, t_name):
                return T, M, None, t_name
            return T, M, (A if M * A * W == T else accumulation(T, M)), t_name
        if T is not None and M is not None:
            if too_small(T, t_name):
                return T, M, None, t_name
            return T, M, accumulation(T, M), t_name
        if T is not None and A is not None:
            if too_small(T, t_name):
                return T, None, None, t_name
            micro = -(-T // (A * W))
            return T, micro, accumulation(T, micro), t_name
        if M is not None and A is not None:
            return M * A * W, M, A, m_name
        if T is not None or (M is None and A is None):
            if T is None:
                T, t_name = KUBETRAIN_DEFAULTS["globalBatchSize"], "spec.training.globalBatchSize"
            if too_small(T, t_name):
                return T, None, None, t_name
            return T, (-(-T // W) if not self.nominal else None), 1, t_name
        if M is not None:
            return M * W, M, 1, m_name
        self.problem(
            a_name,
            f"{a_name} alone does not give a batch size: DeepSpeed needs train_batch_size or "
            f"train_micro_batch_size_per_gpu",
            f"set {DS}.train_batch_size or {DS}.train_micro_batch_size_per_gpu "
            f"(or spec.training.globalBatchSize / microBatchSize)",
        )
        return KUBETRAIN_DEFAULTS["globalBatchSize"], None, None, "spec.training.globalBatchSize"

    # -- gradient clipping -------------------------------------------------------------

    def gradient_clipping(self) -> float:
        ds = self.number(f"{DS}.gradient_clipping", self.ds.get("gradient_clipping"), ge=0.0)
        value = self.pick("spec.training.gradientClipping", self.spec.training.gradient_clipping,
                          f"{DS}.gradient_clipping", ds)
        return float(value) if value is not None else KUBETRAIN_DEFAULTS["gradientClipping"]

    # -- optimizer -----------------------------------------------------------------------

    def optimizer(self) -> api.OptimizerSpec:
        o = self.spec.optimizer
        sec = self.section("optimizer")
        ds_type: str | None = None
        params: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        why = ""
        base = f"{DS}.optimizer"
        if sec is not None:
            raw_params = sec.get("params")
            if raw_params is not None and not isinstance(raw_params, Mapping):
                self.problem(f"{base}.params", f"must be an object (got {_fmt(raw_params)})", "write params: {...}")
            elif raw_params is not None:
                params = dict(raw_params)
            ds_type, defaults, why = self._ds_optimizer(sec.get("type"), params)
        p = f"{base}.params"
        opt_type = self.pick("spec.optimizer.type", o.type, f"{base}.type", ds_type, why=why,
                             shown=sec.get("type") if sec is not None else None)
        if opt_type is None:
            opt_type = KUBETRAIN_DEFAULTS["optimizer.type"]
        ds_lr = self.number(f"{p}.lr", params.get("lr"), gt=0.0)
        ds_eps = self.number(f"{p}.eps", params.get("eps"), gt=0.0)
        ds_wd = self.number(f"{p}.weight_decay", params.get("weight_decay"), ge=0.0)
        ds_mom = self.number(f"{p}.momentum", params.get("momentum"), ge=0.0, lt=1.0)
        ds_nesterov = self.boolean(f"{p}.nesterov", params.get("nesterov"))
        ds_betas = self._betas(f"{p}.betas", params.get("betas"))

        def value(name: str, wire: str, typed: Any, ds_value: Any, fallback: Any) -> Any:
            got = self.pick(f"spec.optimizer.{wire}", typed, f"{p}.{name}", ds_value)
            if got is not None:
                return got
            return defaults.get(name, fallback) if sec is not None else fallback

        d = KUBETRAIN_DEFAULTS
        sgd = opt_type == "SGD"
        lr = value("lr", "lr", o.lr, ds_lr, d["optimizer.lr"])
        betas = value("betas", "betas", o.betas, ds_betas, d["optimizer.betas"])
        eps = value("eps", "eps", o.eps, ds_eps, d["optimizer.eps"])
        wd = value("weight_decay", "weightDecay", o.weight_decay, ds_wd, 0.0 if sgd else d["optimizer.weightDecay"])
        momentum = value("momentum", "momentum", o.momentum, ds_mom, d["optimizer.momentum"])
        nesterov = value("nesterov", "nesterov", o.nesterov, ds_nesterov, d["optimizer.nesterov"])
        if sgd and nesterov and (momentum <= 0 or params.get("dampening", 0) != 0):
            self.problem(
                f"{p}.nesterov" if ds_nesterov else "spec.optimizer.nesterov",
                "Nesterov momentum needs momentum > 0 and dampening 0 (torch.optim.SGD rejects it otherwise)",
                "set momentum (e.g. 0.9) or nesterov: false",
            )
        return api.OptimizerSpec(
            type=opt_type, lr=float(lr), betas=[float(b) for b in betas], eps=float(eps),
            weight_decay=float(wd), momentum=float(momentum), nesterov=bool(nesterov),
        )

    def _betas(self, path: str, value: Any) -> list[float] | None:
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(_is_number(b) and 0.0 <= b < 1.0 for b in value)):
            self.problem(path, f"must be two numbers in [0, 1) (got {_fmt(value)})", "write e.g. [0.9, 0.999]")
            return None
        return [float(b) for b in value]

    def _ds_optimizer(self, type_: Any, params: dict[str, Any]) -> tuple[str | None, dict[str, Any], str]:
        """DeepSpeed optimizer type -> (typed type, DeepSpeed's defaults, explanation)."""
        base = f"{DS}.optimizer"
        if type_ is None:
            self.problem(f"{base}.type", "is missing: DeepSpeed ignores an optimizer section without a type",
                         "add type: Adam (or AdamW, SGD), or remove the optimizer section")
            return None, {}, ""
        if not isinstance(type_, str):
            self.problem(f"{base}.type", f"must be a string (got {_fmt(type_)})", "write type: Adam")
            return None, {}, ""
        name = type_.lower() if type_.lower() in _DEEPSPEED_OPTIMIZERS else type_
        if name in ("adam", "adamw"):
            torch_adam = self.boolean(f"{base}.params.torch_adam", params.get("torch_adam", False)) or False
            w_mode = self.boolean(f"{base}.params.adam_w_mode", params.get("adam_w_mode", True))
            adamw = name == "adamw" or w_mode is not False
            if name == "adamw" and w_mode is False:
                self.notes.append(f"{base}.params.adam_w_mode=false has no effect: type {type_} is always AdamW "
                                  f"(as in DeepSpeed)")
            impl = ("torch.optim.AdamW" if adamw else "torch.optim.Adam") if torch_adam else "FusedAdam"
            allowed = (_TORCH_ADAM_PARAMS if torch_adam else _FUSED_ADAM_PARAMS) | {"adam_w_mode", "torch_adam"}
            self._check_params(params, allowed, f"{impl} (DeepSpeed optimizer type {type_})")
            if params.get("amsgrad") is True:
                self.problem(f"{base}.params.amsgrad", "AMSGrad is not supported (DeepSpeed's FusedAdam rejects it "
                             "too)", "remove amsgrad")
            # torch's AdamW defaults weight_decay to 0.01; FusedAdam and torch's Adam to 0.
            wd = 0.01 if (torch_adam and adamw) else 0.0
            defaults = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": wd}
            why = (" (DeepSpeed's Adam is AdamW unless params.adam_w_mode is false)" if name == "adam" and adamw
                   else " (with params.adam_w_mode false DeepSpeed's Adam is torch's Adam)" if not adamw else "")
            return ("AdamW" if adamw else "Adam"), defaults, why
        if name == "SGD":
            self._check_params(params, _SGD_PARAMS, "torch.optim.SGD (DeepSpeed optimizer type SGD)")
            return "SGD", {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}, ""
        if name in _DEEPSPEED_OPTIMIZERS:
            self.problem(f"{base}.type", f"DeepSpeed optimizer '{type_}' is not supported by Kubetrain",
                         "use Adam, AdamW or SGD")
        elif name in _TORCH_OPTIMIZERS:
            self.problem(f"{base}.type", f"torch.optim.{type_} is accepted by DeepSpeed but not supported by "
                         "Kubetrain", "use Adam, AdamW or SGD")
        else:
            hint = _close(type_, ["Adam", "AdamW", "SGD"])
            self.problem(f"{base}.type", f"unknown optimizer type '{type_}' (neither a DeepSpeed optimizer nor a "
                         "torch.optim class; torch names are case-sensitive)",
                         hint or "use Adam, AdamW or SGD")
        return None, {}, ""

    def _check_params(self, params: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
        for name in params:
            path = f"{DS}.optimizer.params.{name}"
            if name == "max_grad_norm":
                self.problem(path, "is not an optimizer parameter (DeepSpeed rejects it)",
                             f"use {DS}.gradient_clipping")
            elif name not in allowed:
                hint = _close(name, allowed)
                self.problem(path, f"'{name}' is not a parameter of {what}; DeepSpeed fails on it",
                             hint or f"remove it (parameters: {', '.join(sorted(allowed))})")

    # -- precision -----------------------------------------------------------------------

    def precision(self) -> api.PrecisionSpec:
        pr = self.spec.precision
        fp16 = self.section("fp16")
        bf16_key = "bf16" if "bf16" in self.ds else ("bfloat16" if "bfloat16" in self.ds else None)
        if "bf16" in self.ds and "bfloat16" in self.ds:
            self.notes.append(f"{DS}.bfloat16 is ignored: {DS}.bf16 takes precedence (as in DeepSpeed)")
        bf16 = self.section(bf16_key) if bf16_key else None
        fp16_on = bf16_on = None
        if fp16 is not None:
            self.check_keys("fp16", fp16, _FP16_KEYS)
            fp16_on = self.boolean(f"{DS}.fp16.enabled", fp16.get("enabled"))
            for k in ("auto_cast", "consecutive_hysteresis", "fp16_master_weights_and_grads"):
                self.boolean(f"{DS}.fp16.{k}", fp16.get(k))
        if bf16 is not None and bf16_key:
            self.check_keys(bf16_key, bf16, _BF16_KEYS)
            for k in sorted(_BF16_KEYS - {"enabled"}):
                self.boolean(f"{DS}.{bf16_key}.{k}", bf16.get(k))
            bf16_on = self.boolean(f"{DS}.{bf16_key}.enabled", bf16.get("enabled"))
        if fp16_on and bf16_on:
            self.problem(f"{DS}.fp16.enabled",
                         f"{DS}.fp16.enabled and {DS}.{bf16_key}.enabled are both true: DeepSpeed rejects "
                         "fp16 and bf16 together", "disable one of them")
        typed = pr.dtype
        contradictions = [
            (fp16_on is True and typed not in (None, "fp16"), "fp16", fp16_on),
            (bf16_on is True and typed not in (None, "bf16"), bf16_key, bf16_on),
            (fp16_on is False and typed == "fp16", "fp16", fp16_on),
            (bf16_on is False and typed == "bf16", bf16_key, bf16_on),
        ]
        for bad, key, on in contradictions:
            if bad:
                self.problem("spec.precision.dtype",
                             f"spec.precision.dtype={typed} contradicts {DS}.{key}.enabled={_fmt(on)}",
                             "remove one of them or make them agree")
        dtype = typed or ("fp16" if fp16_on else "bf16" if bf16_on else KUBETRAIN_DEFAULTS["precision.dtype"])
        fp16 = fp16 or {}
        ds_vals = {
            "loss_scale": self.number(f"{DS}.fp16.loss_scale", fp16.get("loss_scale"), ge=0.0),
            "initial_scale_power": self.integer(f"{DS}.fp16.initial_scale_power", fp16.get("initial_scale_power"),
                                                ge=0, le=64),
            "loss_scale_window": self.integer(f"{DS}.fp16.loss_scale_window", fp16.get("loss_scale_window"), ge=1),
            "hysteresis": self.integer(f"{DS}.fp16.hysteresis", fp16.get("hysteresis"), ge=1),
            "consecutive_hysteresis": fp16.get("consecutive_hysteresis")
            if isinstance(fp16.get("consecutive_hysteresis"), bool) else None,
            # DeepSpeed's min_loss_scale is an int field (1.0 passes, 0.5 does not).
            "min_loss_scale": self.integer(f"{DS}.fp16.min_loss_scale", fp16.get("min_loss_scale"), ge=1),
        }
        update: dict[str, Any] = {"dtype": dtype}
        if dtype == "fp16":
            for key, (attr, wire) in _FP16_TYPED.items():
                got = self.pick(f"spec.precision.{wire}", getattr(pr, attr), f"{DS}.fp16.{key}", ds_vals[key])
                got = FP16_DEFAULTS[key] if got is None else got
                update[attr] = float(got) if key in ("loss_scale", "min_loss_scale") else got
        else:
            ignored = [k for k in _FP16_TYPED if k in fp16]
            if ignored:
                self.notes.append(f"{DS}.fp16.{{{', '.join(ignored)}}} ha{'s' if len(ignored) == 1 else 've'} no "
                                  f"effect: the precision is {dtype}, not fp16")
        return pr.model_copy(update=update)

    # -- strategy ------------------------------------------------------------------------

    def strategy(self) -> str:
        zo = self.ds.get("zero_optimization")
        stage: int | None = None
        path = f"{DS}.zero_optimization.stage"
        if isinstance(zo, bool):
            stage, path = (1 if zo else 0), f"{DS}.zero_optimization"
        elif zo is not None:
            sec = self.section("zero_optimization")
            if sec is not None:
                self.check_keys("zero_optimization", sec, _ZERO_KEYS)
                raw = sec.get("stage")
                if raw is not None:
                    if not _is_int(raw) or raw not in _STRATEGY_OF_STAGE:
                        self.problem(path, f"must be 0, 1, 2 or 3 (got {_fmt(raw)}; DeepSpeed's maximum ZeRO "
                                     "stage is 3)", "use 0 (ddp), 1, 2 or 3")
                    else:
                        stage = raw
        ds_strategy = _STRATEGY_OF_STAGE[stage] if stage is not None else None
        typed = self.spec.parallelism.strategy
        if typed is not None and ds_strategy is not None and typed != ds_strategy:
            self.problem("spec.parallelism.strategy",
                         f"spec.parallelism.strategy={typed} contradicts {path}={_fmt(zo if isinstance(zo, bool) else stage)}"
                         f" (= {ds_strategy})", "remove one of them or make them agree")
        return typed or ds_strategy or KUBETRAIN_DEFAULTS["parallelism.strategy"]

    # -- schedule ------------------------------------------------------------------------

    def schedule(self, base_lr: float, opt_type: str, lr_given: bool) -> api.LRScheduleSpec:
        ls = self.spec.lr_schedule
        sec = self.section("scheduler")
        base = f"{DS}.scheduler"
        ds_type: str | None = None
        ds_params: dict[str, Any] = {}
        if sec is not None:
            raw_type = sec.get("type")
            raw_params = sec.get("params")
            if raw_params is not None and not isinstance(raw_params, Mapping):
                self.problem(f"{base}.params", f"must be an object (got {_fmt(raw_params)})", "write params: {...}")
            elif raw_params is not None:
                ds_params = dict(raw_params)
            if raw_type is None:
                self.problem(f"{base}.type", "is missing: DeepSpeed ignores a scheduler section without a type",
                             f"add type (one of {', '.join(_DS_SCHEDULERS)}) or remove the scheduler section")
            elif not isinstance(raw_type, str):
                self.problem(f"{base}.type", f"must be a string (got {_fmt(raw_type)})", "write type: WarmupLR")
            elif raw_type in _DS_SCHEDULERS:
                ds_type = raw_type
            elif raw_type == "Constant":
                self.problem(f"{base}.type", "'Constant' is not a DeepSpeed scheduler",
                             "remove the scheduler section for a constant lr (or use spec.lrSchedule.type: Constant)")
            elif raw_type in _TORCH_SCHEDULERS:
                self.problem(f"{base}.type", f"torch.optim.lr_scheduler.{raw_type} is accepted by DeepSpeed but "
                             "not supported by Kubetrain", f"use one of {', '.join(_DS_SCHEDULERS)}")
            else:
                hint = _close(raw_type, _DS_SCHEDULERS)
                self.problem(f"{base}.type", f"unknown scheduler type '{raw_type}' (DeepSpeed rejects it)",
                             hint or f"use one of {', '.join(_DS_SCHEDULERS)}")
            if "total_num_steps" in [p.rsplit(".", 1)[-1] for p in self.auto if p.startswith(f"{base}.params.")]:
                ds_params["total_num_steps"] = self.spec.training.max_steps
                self.notes.append(f"{base}.params.total_num_steps is \"auto\": set to spec.training.maxSteps "
                                  f"({self.spec.training.max_steps}), as the Hugging Face Trainer does")
        type_ = self.pick("spec.lrSchedule.type", ls.type, f"{base}.type", ds_type)
        typed_params = _normalise(ls.params, "spec.lrSchedule.params", []) if ls.params is not None else None
        params: dict[str, Any] = dict(ds_params)
        for k, v in (typed_params or {}).items():
            if k in ds_params:
                self.pick(f"spec.lrSchedule.params.{k}", v, f"{base}.params.{k}", ds_params[k])
            params[k] = v
        if type_ is None:
            type_ = KUBETRAIN_DEFAULTS["lrSchedule.type"]
        from_typed = set(typed_params or {})
        if type_ in SCHEDULE_TYPES and not any(p.path.startswith((f"{base}.type", "spec.lrSchedule.type"))
                                               for p in self.problems):
            try:
                sched = make_schedule(type_, params, base_lr=base_lr)
            except ScheduleError as exc:
                key = exc.key
                if key == "type":
                    path = "spec.lrSchedule.type" if ls.type is not None else f"{base}.type"
                elif key == "params":
                    path = "spec.lrSchedule.params" if typed_params is not None else f"{base}.params"
                elif key in from_typed or ds_type is None:
                    path = f"spec.lrSchedule.params.{key}"
                else:
                    path = f"{base}.params.{key}"
                message, _, fix = exc.message.rpartition("; ")
                if not message:
                    message, fix = exc.message, "see the DeepSpeed docs for the scheduler's parameters"
                self.problem(path, message, fix)
            else:
                self._schedule_notes(type_, sched.params, params, base_lr, opt_type, lr_given)
        resolved_params = params if (params or ls.params is not None or sec is not None) else None
        return api.LRScheduleSpec(type=type_, params=resolved_params)

    def _schedule_notes(self, type_: str, resolved: Mapping[str, Any], given: Mapping[str, Any], base_lr: float,
                        opt_type: str, lr_given: bool) -> None:
        peak_key = _SETS_OWN_LR.get(type_)
        if peak_key is not None:
            if type_ == "WarmupDecayLR" and "warmup_max_lr" not in given and resolved["warmup_max_lr"] != base_lr:
                self.notes.append(f"WarmupDecayLR warms up to warmup_max_lr={_fmt(resolved['warmup_max_lr'])} "
                                  f"(DeepSpeed's default), not to the optimizer lr {_fmt(base_lr)}; set "
                                  "warmup_max_lr to change it")
            elif lr_given and resolved[peak_key] != base_lr:
                self.notes.append(f"the optimizer lr {_fmt(base_lr)} is not used: {type_} sets the lr itself "
                                  f"({peak_key}={_fmt(resolved[peak_key])})")
        if type_ == "WarmupLR" and lr_given and resolved.get("warmup_max_lr") not in (None, base_lr) \
                and "warmup_max_lr" in given:
            self.notes.append(f"the optimizer lr {_fmt(base_lr)} is not used: WarmupLR warms up to "
                              f"warmup_max_lr={_fmt(resolved['warmup_max_lr'])}")
        if type_ == "OneCycle" and opt_type == "SGD" and resolved.get("cycle_momentum"):
            self.notes.append("OneCycle's cycle_momentum has no effect with SGD: DeepSpeed cycles Adam betas only "
                              "(it disables cycle_momentum for optimizers without betas)")

    # -- all -----------------------------------------------------------------------------

    def run(self) -> Resolution:
        spec = self.spec
        if spec.deepspeed is not None and not isinstance(spec.deepspeed, Mapping):
            self.problem(DS, "must be an object (a DeepSpeed JSON config)", "write deepspeed: {...}")
        prefix = f"{DS}."
        auto = [p[len(prefix):] for p in self.auto if p.startswith(prefix)]
        auto = [k for k in auto if (k in MAPPED_KEYS or k.startswith("scheduler.params."))
                and k != "scheduler.params.total_num_steps"]
        if auto:
            self.notes.append(f"\"auto\" (a Hugging Face Trainer placeholder) is treated as not set, so defaults "
                              f"apply, for {DS}.{{{', '.join(auto)}}}")
        G, M, A, _ = self.batch()
        clip = self.gradient_clipping()
        optimizer = self.optimizer()
        ds_opt = self.ds.get("optimizer")
        ds_params = ds_opt.get("params") if isinstance(ds_opt, Mapping) else None
        lr_given = spec.optimizer.lr is not None or (isinstance(ds_params, Mapping) and "lr" in ds_params)
        precision = self.precision()
        strategy = self.strategy()
        schedule = self.schedule(float(optimizer.lr or 0.0), optimizer.type or "AdamW", bool(lr_given))
        if not self.nominal and M is None and not self.problems:
            M = -(-G // self.world)
        training = spec.training.model_copy(
            update={"global_batch_size": G, "micro_batch_size": M, "gradient_clipping": clip}
        )
        parallelism = spec.parallelism.model_copy(update={"strategy": strategy})
        resolved = spec.model_copy(deep=True).model_copy(
            update={"training": training, "optimizer": optimizer, "precision": precision,
                    "parallelism": parallelism, "lr_schedule": schedule}
        )
        unsupported = unsupported_keys(spec.deepspeed or {})
        notes = [_unsupported_note(k) for k in unsupported] + self.notes
        if A is not None and self.ds.get("gradient_accumulation_steps") is not None and spec.workers.min != spec.workers.max:
            notes.append(f"{DS}.gradient_accumulation_steps={A} holds at {self.world} processes; when the job "
                         f"runs at another size the global batch ({G}) and micro batch stay and the accumulation "
                         "is derived again")
        return Resolution(
            spec=resolved, world_size=self.world, nominal=self.nominal, gradient_accumulation_steps=A,
            problems=_dedupe(self.problems), notes=notes, unsupported=unsupported,
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _unsupported_note(key: str) -> str:
    top = key.split(".", 1)[0]
    extra = ""
    if "." not in key and top not in _HINTS:
        near = difflib.get_close_matches(key, _KNOWN_TOP, n=1, cutoff=0.8)
        extra = f" (did you mean '{near[0]}'?)" if near else ""
    elif top in _HINTS:
        extra = f" ({_HINTS[top]})"
    return f"{DS}.{key} is not supported and is ignored{extra}"


# ------------------------------------------------------------------------------ public API


def analyse(spec: api.TrainingJobSpec, world_size: int | None = None) -> Resolution:
    """Map `spec.deepspeed` onto the typed fields; never raises (see `Resolution.problems`)."""
    if world_size is not None and (not _is_int(world_size) or world_size < 1):
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    return _Mapper(spec, world_size).run()


def resolve(spec: api.TrainingJobSpec, world_size: int | None = None) -> api.TrainingJobSpec:
    """A new spec with every DeepSpeed-settable typed field filled.

    Each field: the typed value, else the DeepSpeed key, else the default. The batch rule
    runs at `world_size` (the data-parallel size DeepSpeed would see), else at the job's
    nominal size workers.replicas x procsPerWorker. microBatchSize stays None ("globalBatchSize
    / world size, no accumulation") when nothing determines it and no world size is given.
    `spec.deepspeed` is kept, so resolving the result again at the same size gives the same
    spec. Raises DeepSpeedConfigError (a ValueError) listing every problem.
    """
    res = analyse(spec, world_size)
    if res.problems:
        raise DeepSpeedConfigError(res.problems)
    return res.spec


def unsupported_keys(ds: Mapping[str, Any]) -> list[str]:
    """Dotted names of the keys of a DeepSpeed config that Kubetrain ignores, in order."""
    if not isinstance(ds, Mapping):
        return []
    cfg = _normalise(ds, DS, [])
    out: list[str] = []

    def supported(key: str, value: Any) -> bool:
        if key in MAPPED_KEYS:
            return True
        if key in NO_OP_KEYS:
            values = NO_OP_KEYS[key]
            return values is None or any(_same(value, v) for v in values)
        return False

    sections = {"optimizer", "scheduler", "fp16", "bf16", "bfloat16", "zero_optimization"}
    for key, value in cfg.items():
        if key in sections and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if key == "optimizer" and sub == "params" and isinstance(sub_value, Mapping):
                    out += [f"{dotted}.{p}" for p, v in sub_value.items() if not supported(f"{dotted}.{p}", v)]
                elif key == "optimizer" and sub in ("type", "params"):
                    continue
                elif not supported(dotted, sub_value):
                    out.append(dotted)
        elif not supported(key, value) and key not in sections:
            out.append(key)
    return out


def valid_world_sizes(spec: api.TrainingJobSpec) -> tuple[list[int], list[int]]:
    """(valid, invalid) worker counts in [minReplicas, maxReplicas] for the resolved batch.

    A count is valid when count x procsPerWorker <= globalBatchSize (every process gets at least
    one sample per step); uneven splits are exact in the trainer, so divisibility does not matter.
    The spec is resolved at its nominal size first.
    """
    res = analyse(spec)
    G = res.spec.training.global_batch_size or KUBETRAIN_DEFAULTS["globalBatchSize"]
    procs = spec.workers.procs
    valid: list[int] = []
    invalid: list[int] = []
    for count in range(spec.workers.min, spec.workers.max + 1):
        (valid if count * procs <= G else invalid).append(count)
    return valid, invalid


def _world_size_note(spec: api.TrainingJobSpec) -> str | None:
    w = spec.workers
    if w.min == w.max:
        return None
    valid, invalid = valid_world_sizes(spec)
    invalid = [c for c in invalid if c != w.replicas]
    if not invalid:
        return None
    sizes = ", ".join(str(c) for c in invalid)
    return (f"globalBatchSize is smaller than the world size at {sizes} worker(s): the job cannot train at those "
            f"sizes (each process needs a sample per step); valid worker counts in [minReplicas {w.min}, "
            f"maxReplicas {w.max}]: {', '.join(str(c) for c in valid)}")


def deepspeed_problems(spec: api.TrainingJobSpec, raw_spec: dict[str, Any]) -> list[Problem]:
    """The semantic check `kubetrain validate` runs: the mapping at the job's nominal size."""
    return analyse(spec).problems


def deepspeed_notes(spec: api.TrainingJobSpec) -> list[str]:
    """Non-fatal remarks for `validate` and the operator's condition message: ignored
    DeepSpeed keys (by name), "auto" placeholders, surprising DeepSpeed defaults, and the
    worker counts of an elastic job with more processes than globalBatchSize."""
    res = analyse(spec)
    notes = list(res.notes)
    if not res.problems:
        note = _world_size_note(spec)
        if note:
            notes.append(note)
    return notes


def note_provider(obj: dict[str, Any]) -> list[str]:
    try:
        spec = api.TrainingJob.model_validate(obj).spec
    except Exception:  # invalid objects get problems, not notes
        return []
    return deepspeed_notes(spec)
