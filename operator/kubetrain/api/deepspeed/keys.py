"""Key tables: what DeepSpeed accepts per section, what Kubetrain maps, ignores or rejects, and the defaults."""

from __future__ import annotations

from typing import Any

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
FP16_TYPED = {  # DeepSpeed fp16 key -> (PrecisionSpec attribute, wire name)
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
            "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks", "compute_grad_norm",
            "parameter_alignment",
        )
    },
}
for _k in ("immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads", "bf16_optimizer_states"):
    NO_OP_KEYS[f"bfloat16.{_k}"] = NO_OP_KEYS[f"bf16.{_k}"]

# Every key DeepSpeed's pydantic sections accept (extra="forbid": anything else is an error there).
FP16_KEYS = frozenset({"enabled", "auto_cast", *FP16_DEFAULTS, "fp16_master_weights_and_grads"})
BF16_KEYS = frozenset(
    {"enabled", "immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads",
     "bf16_optimizer_states"}
)
ZERO_KEYS = frozenset(
    {k.split(".", 1)[1] for k in NO_OP_KEYS if k.startswith("zero_optimization.")}
    | {
        "stage", "elastic_checkpoint", "offload_param", "offload_optimizer", "zenflow", "cpu_offload_param",
        "cpu_offload_use_pin_memory", "cpu_offload", "gather_16bit_weights_on_model_save",
        "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
        "legacy_stage1", "zero_hpz_partition_size", "zero_quantized_weights",
        "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "pipeline_loading_checkpoint",
        "save_muon_momentum_buffer_in_memory", "leaf_module", "compute_grad_norm", "parameter_alignment",
    }
)

STRATEGY_OF_STAGE = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}

# DeepSpeed's own optimizers (config.DEEPSPEED_OPTIMIZERS; matched case-insensitively).
DEEPSPEED_OPTIMIZERS = (
    "adagrad", "adam", "adamw", "lamb", "onebitadam", "onebitlamb", "zerooneadam", "muadam", "muadamw",
    "musgd", "lion", "muon",
)
# Other names DeepSpeed resolves as torch.optim classes (case-sensitive).
TORCH_OPTIMIZERS = (
    "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "ASGD", "LBFGS", "NAdam", "RAdam",
    "RMSprop", "Rprop", "SGD", "SparseAdam",
)
# Keyword arguments of what DeepSpeed builds: FusedAdam (default), torch.optim.Adam/AdamW
# (params.torch_adam: true), torch.optim.SGD. Anything else is a TypeError in DeepSpeed.
FUSED_ADAM_PARAMS = frozenset(
    {"lr", "bias_correction", "betas", "eps", "weight_decay", "amsgrad", "set_grad_none"}
)
TORCH_ADAM_PARAMS = frozenset(
    {"lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable", "differentiable",
     "fused", "decoupled_weight_decay"}
)
SGD_PARAMS = frozenset(
    {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable", "fused"}
)
# DeepSpeed schedulers (lr_schedules.VALID_LR_SCHEDULES) plus the one torch scheduler we implement.
DS_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest", "ReduceLROnPlateau")
TORCH_SCHEDULERS = (
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
    "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "CyclicLR", "CosineAnnealingWarmRestarts",
    "OneCycleLR", "PolynomialLR", "LRScheduler",
)
# Schedules that set the lr themselves (the optimizer's lr is not used).
SETS_OWN_LR = {"WarmupDecayLR": "warmup_max_lr", "OneCycle": "cycle_max_lr", "LRRangeTest": "lr_range_test_min_lr"}

# Known top-level keys, for "did you mean" on unsupported ones, and hints for common sections.
KNOWN_TOP = sorted(
    {k.split(".", 1)[0] for k in MAPPED_KEYS | NO_OP_KEYS.keys()} | {"optimizer", "scheduler", "fp16", "bf16"}
)
HINTS = {
    "checkpoint": "see spec.checkpoint",
    "torch_autocast": "use fp16 or bf16",
    "tensor_parallel": "tensor parallelism is spec.parallelism.tensorParallel",
    "pipeline": "pipeline parallelism is not part of a DeepSpeed config in Kubetrain",
    "comms_logger": "Kubetrain does not log collectives; torch.profiler shows them",
    "wandb": "Kubetrain does not send to Weights & Biases; metrics go to metrics.jsonl, /metrics and "
    "tensorboard / csv_monitor when enabled",
}

# Batch keys are strict integers (32.0 is rejected); DeepSpeed's pydantic int fields accept 16.0.
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")

# Blocks DeepSpeed 0.19.8 refuses outright (runtime/config.py: removed features), with the reason in our words.
REMOVED_TOP = {
    "nebula": "Nebula checkpointing was removed from DeepSpeed",
    "compression_training": "the DeepSpeed compression library was removed",
    "amp": "the NVIDIA Apex AMP integration was removed (use fp16 or bf16)",
    "quantize_training": "Mixture-of-Quantization (quantize_training) was removed",
    "sparse_gradients": "sparse embedding-gradient compression was removed",
    "eigenvalue": "eigenvalue-based Mixture-of-Quantization was removed",
    "sparse_attention": "DeepSpeed Sparse Attention was removed",
    "elasticity": "DeepSpeed elastic training was removed (Kubetrain's elasticity is spec.workers.minReplicas / "
    "maxReplicas)",
    "graph_harvesting": "graph harvesting was removed",
    "curriculum_learning": "the top-level curriculum_learning block was removed (it lives under data_efficiency)",
    "progressive_layer_drop": "Progressive Layer Dropping was removed",
}
REMOVED_ZERO = {
    "mics_shard_size": "MiCS ZeRO-3 sharding was removed",
    "mics_hierarchical_params_gather": "MiCS ZeRO-3 sharding was removed",
    "zeropp_loco_param": "LoCo-ZeRO++ was removed",
}

# DeepSpeedZeroConfig's numeric fields and their bounds (pydantic: an integral float such as 2e8 is an int).
ZERO_INT_FIELDS: dict[str, tuple[str, int]] = {
    "reduce_bucket_size": (">", 0),
    "allgather_bucket_size": (">=", 0),
    "sub_group_size": (">=", 0),
    "prefetch_bucket_size": (">=", 0), "stage3_prefetch_bucket_size": (">=", 0),
    "param_persistence_threshold": (">=", 0), "stage3_param_persistence_threshold": (">=", 0),
    "model_persistence_threshold": (">=", 0), "stage3_model_persistence_threshold": (">=", 0),
    "max_live_parameters": (">=", 0), "stage3_max_live_parameters": (">=", 0),
    "max_reuse_distance": (">=", 0), "stage3_max_reuse_distance": (">=", 0),
    "zero_hpz_partition_size": (">=", 0),
    "module_granularity_threshold": ("any", 0), "stage3_module_granularity_threshold": ("any", 0),
}
# "auto" values the Hugging Face integration fills from the model's hidden size h.
ZERO_AUTO_FROM_HIDDEN = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}

# zero_optimization.offload_optimizer / offload_param (DeepSpeed's offload configs, extra="forbid").
OFFLOAD_OPTIMIZER_KEYS = frozenset(
    {"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read", "pipeline_write", "fast_init", "ratio",
     "super_offload", "cpuadam_cores_perc"}
)
OFFLOAD_PARAM_KEYS = frozenset({"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"})
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
OFFLOAD_PIN_DEFAULT = True  # DeepSpeed 0.19's default for pin_memory
# Offload knobs that change only how DeepSpeed moves the data (no-ops here) at their default values.
OFFLOAD_NO_OP = {"buffer_count": None, "buffer_size": None, "max_in_cpu": None, "pipeline_read": (False,),
                 "pipeline_write": (False,), "fast_init": (False,), "ratio": (1, 1.0), "super_offload": (False,),
                 "cpuadam_cores_perc": None, "nvme_path": None}

# The three spellings of "write 16-bit consolidated weights on save" (DeepSpeed aliases).
GATHER_16BIT_KEYS = ("gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save",
                     "stage3_gather_fp16_weights_on_model_save")

# activation_checkpointing (DeepSpeedActivationCheckpointingConfig) and its defaults; the block turns on the
# trainer's activation checkpointing, the knobs below have no equivalent at values other than these.
ACTIVATION_CHECKPOINTING_DEFAULTS: dict[str, Any] = {
    "partition_activations": False, "contiguous_memory_optimization": False, "cpu_checkpointing": False,
    "number_checkpoints": None, "synchronize_checkpoint_boundary": False, "profile": False,
}

# Monitors (deepspeed/monitor/config.py, extra="forbid"): tensorboard and csv_monitor are written for real.
MONITOR_KEYS = {
    "tensorboard": frozenset({"enabled", "output_path", "job_name"}),
    "csv_monitor": frozenset({"enabled", "output_path", "job_name"}),
    "wandb": frozenset({"enabled", "group", "team", "project"}),
    "comet": frozenset({"enabled", "samples_log_interval", "project", "workspace", "api_key", "experiment_name",
                        "experiment_key", "online", "mode"}),
}
MONITOR_JOB_NAME_DEFAULT = "DeepSpeedJobName"
# Sections that are handled (mapped, or accepted with a named note) rather than unsupported.
HANDLED_SECTIONS = frozenset({"activation_checkpointing", "tensorboard", "csv_monitor"})
