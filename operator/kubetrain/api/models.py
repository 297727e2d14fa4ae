"""The TrainingJob contract: pydantic models for spec and status.

Everything else derives from these models: the CRD's structural schema and CEL rules
(`kubetrain.api.crd`), `kubetrain validate`, the docs' field reference and the trainer's
config parsing. Field names are camelCase on the wire (aliases) and snake_case here.

No CRD server-side defaults: a default lives only here (and in the field's description),
so the stored object says exactly what the user wrote, and "given explicitly" stays
knowable for the DeepSpeed-mapping rule (see `kubetrain.api.deepspeed`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetrain.api.constants import JOB_NAME_MAX_LENGTH, MAX_WORKERS


class CelRule(BaseModel):
    """One CEL `x-kubernetes-validations` rule attached to the schema of a model."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None


class ApiModel(BaseModel):
    """Base: camelCase aliases, unknown fields rejected (typos are errors)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=False,
        # The API server's types exactly: no "300" -> 300, no true -> 1, no NaN/Infinity (JSON has none).
        strict=True, allow_inf_nan=False,
    )
    # CEL rules of this object, emitted into the CRD and evaluated offline by `validate`.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """`field: null` means the field is not there, as the API server prunes nulls of a
        structural schema's (non-nullable) fields before validating."""
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data


def _free_object(description: str, max_properties: int = 64, **kw: Any) -> Any:
    """A field that passes an arbitrary Kubernetes object through (pod settings), with at most
    `max_properties` top-level keys (the request size bounds the rest)."""
    return Field(
        default=None, description=description, max_length=max_properties,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}, **kw,
    )


def _string_map(description: str, max_properties: int = 64) -> Any:
    """A map of strings (labels, annotations, node selector), bounded in keys (values: see the type)."""
    return Field(default=None, description=description, max_length=max_properties)


LabelValue = Annotated[str, Field(max_length=63)]
LongText = Annotated[str, Field(max_length=4096)]


# Strings that reach a file system, a container runtime or a name field: no control characters
# (a NUL in a path is an error only at start), bounded length. The same patterns are Go regexps
# (RE2) on the API server and Rust regexps in pydantic: only ASCII classes, no look-arounds.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
NO_SPACE = r"^[^\x00-\x20\x7f]+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PATH_MAX = 4096


def _name(description: str, pattern: str = DNS_SUBDOMAIN, max_length: int = 253) -> Any:
    """An optional reference to another Kubernetes object by name."""
    return Field(default=None, description=description, min_length=1, max_length=max_length, pattern=pattern)


def _free_list(description: str, max_items: int = 256) -> Any:
    """A list of arbitrary Kubernetes objects (env, volumes, tolerations...), at most `max_items`."""
    return Field(
        default=None,
        description=description,
        max_length=max_items,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


Quantity = int | str  # Kubernetes resource quantity (int-or-string)


# ---------------------------------------------------------------------------------- workers


class ResourceRequirements(ApiModel):
    limits: dict[str, Quantity] | None = Field(
        default=None,
        description="Resource limits per worker container (e.g. cpu: 8, memory: 64Gi). Default: none "
        "beyond nvidia.com/gpu, which is set from gpusPerWorker.",
        json_schema_extra={"additionalProperties": {"x-kubernetes-int-or-string": True}},
    )
    requests: dict[str, Quantity] | None = Field(
        default=None,
        description="Resource requests per worker container. Default: equal to limits.",
        json_schema_extra={"additionalProperties": {"x-kubernetes-int-or-string": True}},
    )


class WorkersSpec(ApiModel):
    replicas: int = Field(default=1, ge=1, le=MAX_WORKERS, description="Number of worker pods (nodes) to run.")
    min_replicas: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS,
        description="Fewest workers the job keeps training with (elastic lower bound). Default: replicas.",
    )
    max_replicas: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS,
        description="Most workers the job may scale to (elastic upper bound). Default: replicas.",
    )
    gpus_per_worker: int = Field(
        default=0, ge=0, le=16, description="GPUs per worker pod (nvidia.com/gpu); 0 runs a CPU job."
    )
    procs_per_worker: int | None = Field(
        default=None, ge=1, le=64,
        description="Training processes per worker pod. Default: max(1, gpusPerWorker).",
    )
    image: str | None = Field(
        default=None, min_length=1, max_length=1024, pattern=NO_SPACE,
        description="Trainer image. Default: the trainer image bundled with the operator release.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the worker container. Default: Kubernetes' default."
    )
    read_only_root_filesystem: bool = Field(
        default=True,
        description="Run the trainer container with a read-only root filesystem; /tmp is an emptyDir (TMPDIR, "
        "and XDG_CACHE_HOME, TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR below it unless set in env). Set "
        "false only for a custom image that must write elsewhere.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Container resources of each worker. Default: only the GPU limit."
    )
    env: list[dict[str, Any]] | None = _free_list("Extra environment variables (core/v1 EnvVar). Default: none.")
    env_from: list[dict[str, Any]] | None = _free_list("core/v1 EnvFromSource list. Default: none.", 64)
    volumes: list[dict[str, Any]] | None = _free_list("Extra pod volumes (core/v1 Volume). Default: none.", 64)
    volume_mounts: list[dict[str, Any]] | None = _free_list(
        "Extra mounts in the worker container (core/v1 VolumeMount). Default: none.", 64
    )
    image_pull_secrets: list[dict[str, Any]] | None = _free_list(
        "core/v1 LocalObjectReference list for pulling the image. Default: none.", 16
    )
    service_account_name: str | None = _name("ServiceAccount the worker pods run as. Default: the namespace's default.")
    labels: dict[str, LabelValue] | None = _string_map("Extra labels on worker pods. Default: none.")
    annotations: dict[str, LongText] | None = _string_map("Extra annotations on worker pods. Default: none.")
    node_selector: dict[str, LabelValue] | None = _string_map("Node selector of worker pods. Default: none.")
    tolerations: list[dict[str, Any]] | None = _free_list(
        "Tolerations of worker pods (core/v1 Toleration). Default: none.", 64
    )
    affinity: dict[str, Any] | None = _free_object(
        "Affinity of worker pods (core/v1 Affinity). Default: none.", max_properties=3
    )
    priority_class_name: str | None = _name("PriorityClass of worker pods. Default: none.")

    cel_rules = (
        CelRule(
            rule="!has(self.minReplicas) || self.minReplicas <= self.replicas",
            message="minReplicas must be <= replicas: lower minReplicas or raise replicas",
            field_path=".minReplicas",
        ),
        CelRule(
            rule="!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
            message="replicas must be <= maxReplicas: lower replicas or raise maxReplicas",
            field_path=".replicas",
        ),
    )

    @property
    def min(self) -> int:
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def max(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @property
    def procs(self) -> int:
        return self.procs_per_worker if self.procs_per_worker is not None else max(1, self.gpus_per_worker)


# ------------------------------------------------------------------------------------ model


ModelPreset = Literal["tiny", "124M", "350M", "1.3B"]


class ModelSpec(ApiModel):
    preset: ModelPreset | None = Field(
        default=None,
        description="Built-in GPT preset (tiny, 124M, 350M, 1.3B); explicit sizes override it. "
        "Default: tiny, unless an entrypoint is given.",
    )
    n_layers: int | None = Field(default=None, ge=1, le=512, description="Transformer blocks. Default: from preset.")
    n_heads: int | None = Field(default=None, ge=1, le=512, description="Attention heads. Default: from preset.")
    d_model: int | None = Field(default=None, ge=8, le=65536, description="Hidden size. Default: from preset.")
    vocab_size: int | None = Field(
        default=None, ge=2, le=1048576, description="Vocabulary size. Default: from preset (256 for byte-level data)."
    )
    seq_len: int | None = Field(
        default=None, ge=2, le=1048576, description="Context length in tokens. Default: from preset."
    )
    tie_embeddings: bool = Field(default=True, description="Share input embedding and output head weights.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout probability.")
    entrypoint: str | None = Field(
        default=None, max_length=512,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description='Your own model: "pkg.module:fn" returning an nn.Module (optionally (module, loss_fn)). '
        "Default: none (the built-in GPT).",
    )
    entrypoint_args: dict[str, Any] | None = _free_object(
        "Keyword arguments passed to the entrypoint function. Default: none."
    )
    tensor_parallel_plan: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=512,
        description='With model.entrypoint and parallelism.tensorParallel > 1: "pkg.module:fn", fn(model, '
        "tp_mesh, sequence_parallel) returning the torch parallelize_module plan (module name -> "
        "ParallelStyle). Default: none (the built-in GPT has its own plan).",
    )
    pipeline_split: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=512,
        description='With model.entrypoint and parallelism.pipelineParallel > 1: "pkg.module:fn", fn(model, '
        "stage_index, num_stages) returning that stage's module (the model's own parameter names; its forward "
        "takes the previous stage's output). Default: none (the built-in GPT splits itself).",
    )

    cel_rules = (
        CelRule(
            rule="!has(self.entrypoint) || (!has(self.preset) && !has(self.nLayers) && !has(self.nHeads) && !has(self.dModel))",
            message="entrypoint replaces the built-in GPT: remove preset/nLayers/nHeads/dModel or remove entrypoint",
            field_path=".entrypoint",
        ),
        CelRule(
            rule="has(self.entrypoint) || !has(self.entrypointArgs)",
            message="entrypointArgs needs entrypoint: set entrypoint or remove entrypointArgs",
            field_path=".entrypointArgs",
        ),
        CelRule(
            rule="has(self.entrypoint) || !has(self.tensorParallelPlan)",
            message="tensorParallelPlan is for entrypoint models (the built-in GPT has its own): set entrypoint "
            "or remove tensorParallelPlan",
            field_path=".tensorParallelPlan",
        ),
        CelRule(
            rule="has(self.entrypoint) || !has(self.pipelineSplit)",
            message="pipelineSplit is for entrypoint models (the built-in GPT splits itself): set entrypoint "
            "or remove pipelineSplit",
            field_path=".pipelineSplit",
        ),
        # + dModel divisible by nHeads, written from the preset table by kubetrain.api.crd
    )


# ------------------------------------------------------------------------------------- data


class DataSpec(ApiModel):
    type: Literal["synthetic", "tokens", "text"] = Field(
        default="synthetic",
        description="synthetic: a deterministic corpus with learnable structure; tokens: memory-mapped "
        "token shards (see `kubetrain prepare-data`); text: byte-level plain text files.",
    )
    path: str | None = Field(
        default=None, min_length=1, max_length=PATH_MAX, pattern=NO_CONTROL,
        description="File, directory or glob of the data inside the worker (tokens and text). Default: none.",
    )
    token_dtype: Literal["uint16", "uint32"] = Field(
        default="uint16", description="Element type of token shards (tokens only)."
    )

    cel_rules = (
        CelRule(
            rule="!has(self.type) || self.type == 'synthetic' || has(self.path)",
            message="data.type tokens/text reads files: set data.path",
            field_path=".path",
        ),
    )


# --------------------------------------------------------------------------------- training


class TrainingSpec(ApiModel):
    max_steps: int = Field(default=100, ge=1, description="Optimizer steps to train for.")
    global_batch_size: int | None = Field(
        default=None, ge=1,
        description="Samples per optimizer step, at any world size (DeepSpeed train_batch_size). "
        "Default: 8, or derived from the DeepSpeed config.",
    )
    micro_batch_size: int | None = Field(
        default=None, ge=1,
        description="Samples per forward/backward on one process (DeepSpeed "
        "train_micro_batch_size_per_gpu); gradient accumulation is derived. "
        "Default: globalBatchSize / world size (no accumulation).",
    )
    seed: int = Field(default=1234, ge=0, description="Seed for weights and data order.")
    eval_every: int = Field(default=0, ge=0, description="Evaluate every N steps; 0 disables evaluation.")
    eval_batches: int = Field(default=4, ge=1, description="Global batches per evaluation.")
    log_every: int = Field(default=1, ge=1, description="Write a metrics-log line every N steps.")
    gradient_clipping: float | None = Field(
        default=None, ge=0.0,
        description="Clip the global gradient norm to this value; 0 disables (DeepSpeed gradient_clipping). "
        "Default: 1.0.",
    )
    activation_checkpointing: bool = Field(
        default=False, description="Recompute transformer-block activations in backward to save memory."
    )
    compile: bool = Field(default=False, description="torch.compile each transformer block.")

    cel_rules = (
        CelRule(
            rule="!has(self.globalBatchSize) || !has(self.microBatchSize) || self.globalBatchSize % self.microBatchSize == 0",
            message="globalBatchSize must be a multiple of microBatchSize: adjust either",
            field_path=".globalBatchSize",
        ),
    )


# ------------------------------------------------------------------------------ parallelism

Strategy = Literal["ddp", "zero1", "zero2", "zero3"]


class LocalSGDSpec(ApiModel):
    sync_every: int = Field(default=8, ge=1, description="Average parameters every N local steps.")


class DiLoCoSpec(ApiModel):
    sync_every: int = Field(default=100, ge=1, description="Inner steps between outer synchronisations.")
    outer_lr: float = Field(default=0.7, gt=0.0, description="Outer (Nesterov SGD) learning rate.")
    outer_momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="Outer momentum.")


class PowerSGDSpec(ApiModel):
    rank: int = Field(default=1, ge=1, le=64, description="Rank of the low-rank gradient approximation.")
    start_step: int = Field(
        default=10, ge=2,
        description="Plain allreduce before this step (warm start); at least 2: torch's PowerSGD hook "
        "compresses only after DDP's first two iterations, which rebuild its buckets.",
    )


class SyncSpec(ApiModel):
    mode: Literal["allreduce", "localSGD", "diloco", "powerSGD"] = Field(
        default="allreduce",
        description="Gradient synchronisation: allreduce every step, or a communication-light mode.",
    )
    local_sgd: LocalSGDSpec | None = Field(
        default=None, alias="localSGD", validation_alias=AliasChoices("localSGD", "local_sgd"),
        description="Settings of mode localSGD. Default: see fields.",
    )
    diloco: DiLoCoSpec | None = Field(default=None, description="Settings of mode diloco. Default: see fields.")
    power_sgd: PowerSGDSpec | None = Field(
        default=None, alias="powerSGD", validation_alias=AliasChoices("powerSGD", "power_sgd"),
        description="Settings of mode powerSGD. Default: see fields.",
    )


class OffloadSpec(ApiModel):
    device: Literal["none", "cpu"] | None = Field(
        default=None,
        description="cpu: keep parameter, gradient and optimizer-state shards in host memory and run the "
        "optimizer step there (FSDP2 CPUOffloadPolicy; strategy zero2 or zero3). DeepSpeed "
        "zero_optimization.offload_optimizer / offload_param. Default: none.",
    )
    pin_memory: bool | None = Field(
        default=None, description="Page-locked host buffers for faster copies (GPU only). Default: true."
    )


class ParallelismSpec(ApiModel):
    strategy: Strategy | None = Field(
        default=None,
        description="ddp: replicate; zero1: shard optimizer state; zero2: also gradients; zero3: also "
        "parameters (DeepSpeed zero_optimization.stage 0-3). Default: ddp.",
    )
    sync: SyncSpec | None = Field(default=None, description="Gradient synchronisation. Default: allreduce.")
    offload: OffloadSpec | None = Field(
        default=None, description="CPU offload of the sharded training state. Default: none."
    )
    tensor_parallel: int = Field(
        default=1, ge=1, le=64,
        description="Tensor-parallel degree: every layer split over this many processes of one pod (it must "
        "divide workers.procsPerWorker, model.nHeads and model.vocabSize); the data-parallel size is "
        "world size / tensorParallel.",
    )
    sequence_parallel: bool | None = Field(
        default=None,
        description="With tensorParallel > 1, also split norms, dropout and the residual stream along the "
        "sequence (their activations / tensorParallel). Default: true when tensorParallel > 1.",
    )
    pipeline_parallel: int = Field(
        default=1, ge=1, le=64,
        description="Pipeline-parallel degree: the model's layers split into this many stages, one per group of "
        "ranks (mesh order pp x dp x tp); pipelineParallel x tensorParallel must divide the world size; the "
        "micro-batches of a step (the gradient-accumulation steps) flow through the stages.",
    )
    pipeline_schedule: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="GPipe, 1F1B, Interleaved1F1B (2 stages per rank) or ZeroBubble (interleaved zero bubble, "
        "2 stages per rank); torch's class names (ScheduleGPipe, Schedule1F1B, ScheduleInterleaved1F1B, "
        "ScheduleInterleavedZeroBubble) and any letter case are accepted. Default: 1F1B.",
    )
    pipeline_boundaries: list[int] | None = Field(
        default=None, max_length=255,
        description="Built-in GPT only: the transformer block each stage after the first starts at (strictly "
        "increasing, one per stage boundary: pipelineParallel - 1 entries, or 2 x pipelineParallel - 1 for "
        "the interleaved schedules). Embeddings are on the first stage, the head on the last. Default: "
        "balanced by parameter count.",
    )

    @field_validator("pipeline_schedule")
    @classmethod
    def _schedule_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from kubetrain.api.pipeline_schedules import canonical_schedule

        return canonical_schedule(value)

    cel_rules = (
        CelRule(
            rule="!has(self.sync) || !has(self.sync.mode) || self.sync.mode == 'allreduce' || !has(self.strategy) || self.strategy == 'ddp'",
            message="localSGD/diloco/powerSGD replicate the model: use strategy ddp with them",
            field_path=".sync.mode",
        ),
        CelRule(
            rule="!has(self.tensorParallel) || self.tensorParallel == 1 || !has(self.sync) || !has(self.sync.mode) "
            "|| self.sync.mode == 'allreduce'",
            message="localSGD/diloco/powerSGD average whole replicas, not tensor-parallel shards: use sync.mode "
            "allreduce with tensorParallel > 1, or tensorParallel 1",
            field_path=".sync.mode",
        ),
        CelRule(
            rule="!has(self.tensorParallel) || self.tensorParallel == 1 || !has(self.strategy) || self.strategy != 'zero1'",
            message="strategy zero1 with tensorParallel > 1 is not supported: use zero2 (also shards gradients "
            "over the data-parallel ranks), zero3 or ddp, or tensorParallel 1",
            field_path=".strategy",
        ),
        CelRule(
            rule="!has(self.sequenceParallel) || !self.sequenceParallel || (has(self.tensorParallel) && self.tensorParallel > 1)",
            message="sequenceParallel needs tensorParallel > 1: set tensorParallel or remove sequenceParallel",
            field_path=".sequenceParallel",
        ),
        CelRule(
            rule="!has(self.pipelineParallel) || self.pipelineParallel == 1 || !has(self.sync) || !has(self.sync.mode) "
            "|| self.sync.mode == 'allreduce'",
            message="localSGD/diloco/powerSGD average whole replicas, not pipeline stages: use sync.mode allreduce "
            "with pipelineParallel > 1, or pipelineParallel 1",
            field_path=".sync.mode",
        ),
        CelRule(
            rule="!has(self.pipelineParallel) || self.pipelineParallel == 1 || !has(self.strategy) || self.strategy != 'zero1'",
            message="strategy zero1 with pipelineParallel > 1 is not supported: use zero2 (also shards gradients "
            "over the data-parallel ranks), zero3 or ddp, or pipelineParallel 1",
            field_path=".strategy",
        ),
        CelRule(
            rule="(has(self.pipelineParallel) && self.pipelineParallel > 1) || "
            "(!has(self.pipelineSchedule) && !has(self.pipelineBoundaries))",
            message="pipelineSchedule and pipelineBoundaries need pipelineParallel > 1: set pipelineParallel or "
            "remove them",
            field_path=".pipelineParallel",
        ),
    )

    @property
    def model_parallel(self) -> int:
        """Ranks that share one data-parallel replica: pipelineParallel x tensorParallel."""
        return self.pipeline_parallel * self.tensor_parallel

    @property
    def sequence_parallel_on(self) -> bool:
        """sequenceParallel as the trainer applies it (default: on whenever tensorParallel > 1)."""
        return self.tensor_parallel > 1 and self.sequence_parallel is not False


# -------------------------------------------------------------------------------- precision


class PrecisionSpec(ApiModel):
    dtype: Literal["fp32", "bf16", "fp16", "fp8"] | None = Field(
        default=None,
        description="Compute precision; master weights stay fp32. fp16 uses dynamic loss scaling; fp8 "
        "needs GPUs of compute capability >= 8.9. Default: fp32, or from the DeepSpeed config.",
    )
    loss_scale: float | None = Field(
        default=None, ge=0.0, description="fp16 only: static loss scale, 0 = dynamic. Default: 0."
    )
    initial_scale_power: int | None = Field(
        default=None, ge=0, le=64, description="fp16 only: dynamic scale starts at 2**this. Default: 16."
    )
    loss_scale_window: int | None = Field(
        default=None, ge=1, description="fp16 only: clean steps before the scale doubles. Default: 1000."
    )
    hysteresis: int | None = Field(
        default=None, ge=1, description="fp16 only: overflows tolerated before the scale halves. Default: 2."
    )
    consecutive_hysteresis: bool | None = Field(
        default=None, description="fp16 only: refill hysteresis after each clean step. Default: false."
    )
    min_loss_scale: float | None = Field(
        default=None, gt=0.0, description="fp16 only: floor of the dynamic scale. Default: 1."
    )
    max_consecutive_non_finite: int = Field(
        default=10, ge=1,
        description="Skip a step whose loss is not finite; fail after this many in a row.",
    )

    cel_rules = (
        CelRule(
            rule="(has(self.dtype) && self.dtype == 'fp16') || !(has(self.lossScale) || has(self.initialScalePower) "
            "|| has(self.lossScaleWindow) || has(self.hysteresis) || has(self.consecutiveHysteresis) "
            "|| has(self.minLossScale))",
            message="loss-scale settings apply only to fp16: set precision.dtype fp16 or remove them",
            field_path=".dtype",
        ),
    )


# -------------------------------------------------------------------------------- optimizer


class OptimizerSpec(ApiModel):
    type: Literal["AdamW", "Adam", "SGD"] | None = Field(
        default=None, description="Optimizer. Default: AdamW, or from the DeepSpeed config."
    )
    lr: float | None = Field(default=None, gt=0.0, description="Base learning rate (finite). Default: 3e-4.")
    betas: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
        default=None, min_length=2, max_length=2, description="Adam betas, each in [0, 1). Default: [0.9, 0.999]."
    )
    eps: float | None = Field(default=None, gt=0.0, description="Adam epsilon. Default: 1e-8.")
    weight_decay: float | None = Field(default=None, ge=0.0, description="Weight decay. Default: 0.01 (0 for SGD).")
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0, description="SGD momentum. Default: 0.")
    nesterov: bool | None = Field(default=None, description="SGD Nesterov momentum. Default: false.")


ScheduleType = Literal[
    "Constant", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest", "ReduceLROnPlateau"
]


class LRScheduleSpec(ApiModel):
    type: ScheduleType | None = Field(
        default=None,
        description="Learning-rate schedule, with DeepSpeed's names and formulas (plus Constant and "
        "ReduceLROnPlateau on the evaluation loss). Default: Constant.",
    )
    params: dict[str, Any] | None = _free_object(
        "The schedule's parameters with DeepSpeed's names (e.g. warmup_num_steps); checked by the "
        "operator and `kubetrain validate`. Default: DeepSpeed's defaults.", max_properties=32
    )


# ------------------------------------------------------------------------------- checkpoint


class StorageSpec(ApiModel):
    claim_name: str | None = _name(
        "PersistentVolumeClaim holding checkpoints (ReadWriteMany for multi-node jobs). "
        "Default: none, an emptyDir that does not survive pod replacement."
    )
    mount_path: str = Field(
        default="/checkpoints", max_length=PATH_MAX, pattern=r"^/[^\x00-\x1f\x7f]*$", description="Mount path in workers."
    )
    sub_path: str | None = Field(
        default=None, max_length=PATH_MAX, pattern=NO_CONTROL,
        description="Sub-path inside the volume (relative, no '..'): the job's name or a directory below it "
        "('<name>/...') unless shared is true. Default: the job name.",
    )
    shared: bool = Field(
        default=False,
        description="Allow subPath to name a directory outside this job's own (another job's checkpoints, a "
        "team directory). Whoever can write there can plant a checkpoint that this job loads on resume "
        "(DCP checkpoints are unpickled): share only with writers you trust.",
    )

    cel_rules = (
        CelRule(
            rule="!has(self.subPath) || (!self.subPath.startsWith('/') && !self.subPath.matches('(^|/)[.][.](/|$)'))",
            message="subPath must be a relative path without '..' (pods refuse others): fix storage.subPath",
            field_path=".subPath",
        ),
    )


class InitFromSpec(ApiModel):
    path: str = Field(
        min_length=1, max_length=PATH_MAX, pattern=NO_CONTROL,
        description="Checkpoint directory (or run directory) to start from, or a .safetensors file of model "
        "weights (as `kubetrain export` writes; read without pickle). A DCP checkpoint's metadata is "
        "unpickled: start only from checkpoints whose writers you trust.",
    )
    mode: Literal["weights", "full"] = Field(
        default="weights", description="weights: model weights only; full: also optimizer, schedule and step."
    )

    cel_rules = (
        CelRule(
            rule="!has(self.mode) || self.mode != 'full' || !self.path.endsWith('.safetensors')",
            message="a .safetensors file holds model weights only: set mode: weights, or point path at a "
            "checkpoint directory for mode: full",
            field_path=".mode",
        ),
    )


class CheckpointSpec(ApiModel):
    interval_steps: int = Field(default=100, ge=0, description="Save every N steps; 0 saves only at the end and on preemption.")
    keep: int = Field(default=3, ge=1, description="Committed checkpoints to keep.")
    async_: bool = Field(
        default=False, alias="async", validation_alias=AliasChoices("async", "async_"),
        description="Write checkpoints in the background while training continues.",
    )
    storage: StorageSpec | None = Field(default=None, description="Where checkpoints live. Default: emptyDir.")
    init_from: InitFromSpec | None = Field(default=None, description="Start from another job's checkpoint.")
    save_timeout_seconds: int = Field(
        default=120, ge=5, le=3600,
        description="Time allowed for the checkpoint taken on SIGTERM (preemption); the pods' "
        "terminationGracePeriodSeconds is this plus 30.",
    )
    on_no_valid: Literal["fail", "restart"] = Field(
        default="fail",
        description="When the checkpoint directory holds checkpoints but none passes verification: fail "
        "stops the run (exit 65, reason NoValidCheckpoint) and overwrites nothing; restart moves them "
        "aside (step-N.damaged-...) and trains from step 0.",
    )


# ---------------------------------------------------------------------------------- elastic


class ElasticSpec(ApiModel):
    max_restarts: int = Field(default=3, ge=0, description="Worker-group restarts inside a pod (torchrun).")
    rendezvous_timeout_seconds: int = Field(
        default=300, ge=10, description="How long a rendezvous waits for minReplicas workers."
    )
    below_min_timeout_seconds: int = Field(
        default=600, ge=0, description="Fail with BelowMinReplicas after this long below minReplicas."
    )
    collective_timeout_seconds: int = Field(
        default=300, ge=10,
        description="Timeout of one collective; a lost rank is detected within it (torch: 10-30 minutes).",
    )


# ------------------------------------------------------------------------------- run policy


class SchedulingSpec(ApiModel):
    gang: Literal["none", "kubernetes", "scheduler-plugins", "volcano"] = Field(
        default="none", description="Gang scheduling: all of minReplicas workers placed together, or none."
    )
    queue: str | None = _name("Volcano queue. Default: none.")
    priority_class_name: str | None = _name("PodGroup priority class. Default: none.")
    scheduling_timeout_seconds: int = Field(
        default=300, ge=10, description="Release the gang if fewer than minReplicas are scheduled by then."
    )
    max_attempts: int = Field(default=3, ge=1, description="Scheduling attempts before the job fails.")


class WatchdogSpec(ApiModel):
    stall_seconds: int = Field(
        default=0, ge=0, description="Act when the step has not advanced this long; 0 disables the watchdog."
    )
    action: Literal["restart", "fail"] = Field(default="restart", description="What to do on a stall.")


class RunPolicySpec(ApiModel):
    suspend: bool = Field(default=False, description="Suspend: checkpoint, delete the workers, keep the status.")
    backoff_limit: int = Field(default=3, ge=0, description="Retryable failures before the job fails.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail with DeadlineExceeded after this long running. Default: none."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished job after this long. Default: keep it."
    )
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        default="Running", description="Which pods to delete when the job finishes."
    )
    scheduling: SchedulingSpec | None = Field(default=None, description="Gang scheduling. Default: none.")
    watchdog: WatchdogSpec | None = Field(default=None, description="Stall watchdog. Default: off.")


# ------------------------------------------------------------------------------------- spec

_SUSPENDED_OLD = "(has(oldSelf.runPolicy) && has(oldSelf.runPolicy.suspend) && oldSelf.runPolicy.suspend)"


def _immutable(path: str, field: str) -> CelRule:
    new, old = f"self.{path}", f"oldSelf.{path}"
    parent = path.rsplit(".", 1)[0] if "." in path else None
    if parent:
        has_new = f"(has(self.{parent}) && has({new}))"
        has_old = f"(has(oldSelf.{parent}) && has({old}))"
    else:
        has_new, has_old = f"has({new})", f"has({old})"
    same = f"({has_new} == {has_old} && (!{has_new} || {new} == {old}))"
    return CelRule(
        rule=f"{_SUSPENDED_OLD} || {same}",
        message=f"{field} is immutable while the job runs: suspend it first (runPolicy.suspend: true)",
        field_path=f".{path}",
        reason="FieldValueForbidden",
    )


class TrainingJobSpec(ApiModel):
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="The worker pods.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="What to train.")
    data: DataSpec = Field(default_factory=DataSpec, description="What to train on.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Steps and batch sizes.")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec, description="How work is split.")
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec, description="Numeric precision.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="The optimizer.")
    lr_schedule: LRScheduleSpec = Field(
        default_factory=LRScheduleSpec, alias="lrSchedule", description="The learning-rate schedule."
    )
    deepspeed: dict[str, Any] | None = _free_object(
        "A DeepSpeed config, as-is; mapped onto the typed fields with DeepSpeed's semantics. Default: none.",
        max_properties=128,
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    elastic: ElasticSpec = Field(default_factory=ElasticSpec, description="Elastic and failure-detection timing.")
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, description="Lifecycle policies.")

    cel_rules = (
        _immutable("model", "spec.model"),
        _immutable("parallelism.strategy", "spec.parallelism.strategy"),
        _immutable("precision", "spec.precision"),
        _immutable("deepspeed", "spec.deepspeed"),
    )


# ----------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal["Scheduled", "Running", "Suspended", "Succeeded", "Failed"]


class Condition(ApiModel):
    type: ConditionType = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(default="", description="CamelCase reason, e.g. BackoffLimitExceeded.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Spec generation this was set for.")


class WorkersStatus(ApiModel):
    desired: int = Field(default=0, description="Workers the job wants now.")
    active: int = Field(default=0, description="Worker pods that exist and are not finished.")
    ready: int = Field(default=0, description="Worker pods that are Ready.")
    failed: int = Field(default=0, description="Worker pods that failed (not yet replaced).")


class RestartsStatus(ApiModel):
    total: int = Field(default=0, description="All restarts of the worker group.")
    failure: int = Field(default=0, description="Restarts after a retryable failure (count toward backoffLimit).")
    preemption: int = Field(default=0, description="Restarts after a preemption (exit 75, never counted).")
    rescale: int = Field(default=0, description="Restarts for a change of worker count.")
    stall: int = Field(default=0, description="Restarts by the stall watchdog.")
    unschedulable: int = Field(default=0, description="Gang releases after a scheduling timeout.")


class FailureStatus(ApiModel):
    pod: str = Field(default="", description="The pod that failed.")
    exit_code: int | None = Field(default=None, description="Its exit code.")
    reason: str = Field(default="", description="Its reason (from the termination message).")
    message: str = Field(default="", description="Its termination message.")
    time: str | None = Field(default=None, description="When it was observed (RFC 3339).")


class ProgressStatus(ApiModel):
    step: int | None = Field(default=None, description="Last completed optimizer step.")
    max_steps: int | None = Field(default=None, description="Steps the job trains for.")
    loss: float | None = Field(default=None, description="Training loss at that step.")
    learning_rate: float | None = Field(default=None, description="Learning rate at that step.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation (0-1); absent on CPU.")
    last_checkpoint_step: int | None = Field(default=None, description="Step of the last committed checkpoint.")
    updated_at: str | None = Field(default=None, description="When this was read from the workers (RFC 3339).")
    step_advanced_at: str | None = Field(
        default=None,
        description="When the operator last saw step advance (RFC 3339); the stall watchdog measures from it.",
    )


class TrainingJobStatus(ApiModel):
    phase: Phase | None = Field(default=None, description="Pending, Running, Restarting, Suspended, Succeeded or Failed.")
    conditions: list[Condition] | None = Field(
        default=None, max_length=16, description="Scheduled, Running, Suspended, Succeeded, Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, description="Spec generation last reconciled.")
    selector: str | None = Field(default=None, description="Label selector of the worker pods (scale subresource).")
    workers: WorkersStatus | None = Field(default=None, description="Worker counts.")
    world_size: int | None = Field(default=None, description="Training processes in the current rendezvous.")
    restarts: RestartsStatus | None = Field(default=None, description="Restarts by cause.")
    last_failure: FailureStatus | None = Field(default=None, description="The most recent worker failure.")
    progress: ProgressStatus | None = Field(default=None, description="Live training progress.")
    scheduling_attempts: int | None = Field(default=None, description="Gang scheduling attempts so far.")
    restart_generation: int | None = Field(
        default=None, description="Incremented on each whole-gang restart; pods of older generations are replaced."
    )
    backoff_until: str | None = Field(default=None, description="No new pods before this time (RFC 3339).")
    below_min_since: str | None = Field(default=None, description="Since when fewer than minReplicas run.")
    start_time: str | None = Field(default=None, description="When the job first ran (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the job finished (RFC 3339).")


JOB_NAME_RULE = CelRule(
    rule=f"!has(self.metadata.name) || (size(self.metadata.name) <= {JOB_NAME_MAX_LENGTH} && "
    f"self.metadata.name.matches('{DNS_LABEL}'))",
    message=f"the job name must be a DNS-1123 label of at most {JOB_NAME_MAX_LENGTH} characters (lowercase "
    "letters, digits and '-', starting and ending with a letter or digit) so that every worker's host name "
    "fits: rename the job",
    field_path=".metadata.name",
)


def job_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a TrainingJob (JOB_NAME_RULE's message), or None."""
    import re

    ok = isinstance(name, str) and len(name) <= JOB_NAME_MAX_LENGTH and re.fullmatch(DNS_LABEL[1:-1], name)
    return None if ok else JOB_NAME_RULE.message


SUBPATH_RULE = CelRule(
    rule="!has(self.metadata.name) || !has(self.spec) || !has(self.spec.checkpoint) || "
    "!has(self.spec.checkpoint.storage) || !has(self.spec.checkpoint.storage.subPath) || "
    "(has(self.spec.checkpoint.storage.shared) && self.spec.checkpoint.storage.shared) || "
    # an absolute path or '..' is StorageSpec's rule's to report (one message per field)
    "self.spec.checkpoint.storage.subPath.startsWith('/') || "
    "self.spec.checkpoint.storage.subPath.matches('(^|/)[.][.](/|$)') || "
    "self.spec.checkpoint.storage.subPath == self.metadata.name || "
    "self.spec.checkpoint.storage.subPath.startsWith(self.metadata.name + '/')",
    message="subPath must be the job's name or a directory below it (another job's directory would let one "
    "job plant checkpoints that the other loads): use '<job name>/...', or set "
    "spec.checkpoint.storage.shared: true to share on purpose",
    field_path=".spec.checkpoint.storage.subPath",
)


class TrainingJob(ApiModel):
    api_version: Literal["kubetrain.dev/v1alpha1"] = Field(default="kubetrain.dev/v1alpha1", description="kubetrain.dev/v1alpha1")
    kind: Literal["TrainingJob"] = Field(default="TrainingJob", description="TrainingJob")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec, description="What to train and how.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state, written by the operator.")

    # on the CRD's root: the API server checks only that a name is a DNS subdomain
    cel_rules = (JOB_NAME_RULE, SUBPATH_RULE)

    @field_validator("metadata")
    @classmethod
    def _name_is_a_label(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if "name" in metadata:
            problem = job_name_problem(metadata["name"])
            if problem:
                raise ValueError(problem)
        return metadata
