"""The ONE place that reads a TrainingJob spec.

Everything else in the trainer uses the small frozen dataclasses defined here, so a field rename
in ``kubetrain.api`` touches only this file.  The spec may come as a whole TrainingJob object or
just its ``spec``; as a dict or as a ``kubetrain.api`` pydantic model.  When ``kubetrain.api`` is
importable the spec is validated by it and ``kubetrain.api.deepspeed.resolve`` merges DeepSpeed keys
into the typed fields; the resolved model is then dumped (camelCase) and read by the dict reader
below, so exactly one code path turns field names into dataclass attributes.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetrain.api import modelsize as _modelsize

from .errors import SpecError

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
DTYPES = ("fp32", "bf16", "fp16", "fp8")
OPTIMIZERS = ("AdamW", "Adam", "SGD")
DATA_TYPES = ("synthetic", "tokens", "text")
SYNC_MODES = ("allreduce", "localSGD", "diloco", "powerSGD")

# Built-in GPT presets (n_layers, n_heads, d_model, vocab_size, seq_len): kubetrain.api.modelsize is the
# single source of truth (pure Python; `kubetrain plan` reads the same table).
PRESETS = _modelsize.PRESETS
DEFAULT_PRESET = _modelsize.DEFAULT_PRESET


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 64
    vocab_size: int = 256
    seq_len: int = 64
    tie_embeddings: bool = True
    dropout: float = 0.0
    preset: str | None = "tiny"
    entrypoint: str | None = None
    entrypoint_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    type: str = "synthetic"
    path: str | None = None
    token_dtype: str = "uint16"


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int = 100
    global_batch_size: int = 8
    micro_batch_size: int | None = None  # None: globalBatchSize / worldSize (no accumulation)
    seed: int = 1234
    eval_every: int = 0
    eval_batches: int = 4
    log_every: int = 1
    gradient_clipping: float = 1.0  # 0 disables clipping; the norm is always computed and logged
    activation_checkpointing: bool = False
    compile: bool = False


@dataclass(frozen=True)
class SyncConfig:
    """Settings of the communication-light sync modes (``spec.parallelism.sync``; see ``sync.py``)."""

    local_sgd_sync_every: int = 8
    diloco_sync_every: int = 100
    diloco_outer_lr: float = 0.7
    diloco_outer_momentum: float = 0.9
    power_sgd_rank: int = 1
    power_sgd_start_step: int = 10


@dataclass(frozen=True)
class ParallelConfig:
    strategy: str = "ddp"
    sync_mode: str = "allreduce"
    tensor_parallel: int = 1
    sync: SyncConfig = field(default_factory=SyncConfig)


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: str = "fp32"
    loss_scale: float = 0.0  # 0: dynamic (fp16 only)
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    consecutive_hysteresis: bool = False
    min_loss_scale: float = 1.0
    max_consecutive_non_finite: int = 10


@dataclass(frozen=True)
class OptimizerConfig:
    type: str = "AdamW"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    type: str | None = None  # None: constant learning rate
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointConfig:
    interval_steps: int = 100  # 0: only at the end and on preemption
    keep: int = 3
    async_: bool = False
    mount_path: str = "/checkpoints"
    claim_name: str | None = None
    sub_path: str | None = None
    init_from: str | None = None
    init_mode: str = "weights"  # weights | full
    save_timeout_seconds: float = 120.0


@dataclass(frozen=True)
class WorkersConfig:
    replicas: int = 1
    gpus_per_worker: int | None = None  # None: not given (use a GPU when one is present)
    procs_per_worker: int | None = None


@dataclass(frozen=True)
class ElasticConfig:
    collective_timeout_seconds: float = 300.0


@dataclass(frozen=True)
class JobConfig:
    name: str = "kubetrain"
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)


# --------------------------------------------------------------------------- the dict reader

_MISSING = object()


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class _Reader:
    """Reads one spec section with readable errors (``spec.training.maxSteps must be ...``)."""

    def __init__(self, path: str, data: Any) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{path} must be an object, got {type(data).__name__}")
        self.path = path
        self.data = data

    def raw(self, key: str, default: Any = None) -> Any:
        for k in (key, _snake(key)):
            if k in self.data and self.data[k] is not None:
                return self.data[k]
        return default

    def sub(self, key: str) -> _Reader:
        return _Reader(f"{self.path}.{key}", self.raw(key, {}))

    def _err(self, key: str, what: str, value: Any) -> SpecError:
        return SpecError(f"{self.path}.{key} must be {what}, got {value!r}")

    def int_(self, key: str, default: Any, *, minimum: int | None = None) -> Any:
        v = self.raw(key, _MISSING)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
            raise self._err(key, "an integer", v)
        if minimum is not None and v < minimum:
            raise self._err(key, f"an integer >= {minimum}", v)
        return int(v)

    def float_(self, key: str, default: Any, *, minimum: float | None = None) -> Any:
        v = self.raw(key, _MISSING)
        if v is _MISSING:
            return default
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise self._err(key, "a number", v) from None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._err(key, "a number", v)
        if minimum is not None and v < minimum:
            raise self._err(key, f"a number >= {minimum}", v)
        return float(v)

    def bool_(self, key: str, default: bool) -> bool:
        v = self.raw(key, _MISSING)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise self._err(key, "true or false", v)
        return v

    def str_(self, key: str, default: Any, choices: tuple[str, ...] | None = None) -> Any:
        v = self.raw(key, _MISSING)
        if v is _MISSING:
            return default
        v = getattr(v, "value", v)  # enums from pydantic models
        if not isinstance(v, str):
            raise self._err(key, "a string", v)
        if choices is not None:
            match = {c.lower(): c for c in choices}.get(v.lower())
            if match is None:
                raise self._err(key, "one of " + ", ".join(choices), v)
            v = match
        return v

    def dict_(self, key: str) -> dict[str, Any]:
        v = self.raw(key, {})
        if not isinstance(v, Mapping):
            raise self._err(key, "an object", v)
        return dict(v)


def _model(r: _Reader) -> ModelConfig:
    entrypoint = r.str_("entrypoint", None)
    preset = r.str_("preset", None, tuple(PRESETS))
    base = dict(PRESETS[preset or DEFAULT_PRESET])
    sizes = {
        "n_layers": r.int_("nLayers", base["n_layers"], minimum=1),
        "n_heads": r.int_("nHeads", base["n_heads"], minimum=1),
        "d_model": r.int_("dModel", base["d_model"], minimum=1),
        "vocab_size": r.int_("vocabSize", base["vocab_size"], minimum=2),
        "seq_len": r.int_("seqLen", base["seq_len"], minimum=1),
    }
    if entrypoint is None and sizes["d_model"] % sizes["n_heads"]:
        raise SpecError(
            f"{r.path}.dModel ({sizes['d_model']}) must be divisible by nHeads ({sizes['n_heads']})"
        )
    if entrypoint is not None and ":" not in entrypoint:
        raise SpecError(f"{r.path}.entrypoint must look like 'package.module:function', got {entrypoint!r}")
    dropout = r.float_("dropout", 0.0, minimum=0.0)
    if dropout >= 1.0:
        raise SpecError(f"{r.path}.dropout must be < 1, got {dropout}")
    return ModelConfig(
        **sizes,
        tie_embeddings=r.bool_("tieEmbeddings", True),
        dropout=dropout,
        preset=(preset or DEFAULT_PRESET) if entrypoint is None else None,
        entrypoint=entrypoint,
        entrypoint_args=r.dict_("entrypointArgs"),
    )


def _data(r: _Reader) -> DataConfig:
    cfg = DataConfig(
        type=r.str_("type", "synthetic", DATA_TYPES),
        path=r.str_("path", None),
        token_dtype=r.str_("tokenDtype", "uint16", ("uint16", "uint32")),
    )
    if cfg.type != "synthetic" and not cfg.path:
        raise SpecError(f"{r.path}.path is required when {r.path}.type is {cfg.type}")
    return cfg


def _training(r: _Reader) -> TrainingConfig:
    return TrainingConfig(
        max_steps=r.int_("maxSteps", 100, minimum=0),
        global_batch_size=r.int_("globalBatchSize", 8, minimum=1),
        micro_batch_size=r.int_("microBatchSize", None, minimum=1),
        seed=r.int_("seed", 1234),
        eval_every=r.int_("evalEvery", 0, minimum=0),
        eval_batches=r.int_("evalBatches", 4, minimum=1),
        log_every=r.int_("logEvery", 1, minimum=1),
        gradient_clipping=r.float_("gradientClipping", 1.0, minimum=0.0),
        activation_checkpointing=r.bool_("activationCheckpointing", False),
        compile=r.bool_("compile", False),
    )


def _parallel(r: _Reader) -> ParallelConfig:
    sync = r.sub("sync")
    sync_mode = sync.str_("mode", "allreduce", SYNC_MODES)
    # The settings objects are siblings of mode (snake_case spellings accepted like everywhere).
    local, diloco, power = (
        _Reader(f"{sync.path}.{k}", sync.raw(k, sync.raw(alt, {})))
        for k, alt in (("localSGD", "local_sgd"), ("diloco", "diloco"), ("powerSGD", "power_sgd"))
    )
    settings = SyncConfig(
        local_sgd_sync_every=local.int_("syncEvery", 8, minimum=1),
        diloco_sync_every=diloco.int_("syncEvery", 100, minimum=1),
        diloco_outer_lr=diloco.float_("outerLr", 0.7, minimum=0.0),
        diloco_outer_momentum=diloco.float_("outerMomentum", 0.9, minimum=0.0),
        power_sgd_rank=power.int_("rank", 1, minimum=1),
        power_sgd_start_step=power.int_("startStep", 10, minimum=0),
    )
    if settings.diloco_outer_momentum >= 1.0:
        raise SpecError(f"{diloco.path}.outerMomentum must be < 1, got {settings.diloco_outer_momentum}")
    return ParallelConfig(
        strategy=r.str_("strategy", "ddp", STRATEGIES),
        sync_mode=sync_mode,
        tensor_parallel=r.int_("tensorParallel", 1, minimum=1),
        sync=settings,
    )


def _precision(r: _Reader) -> PrecisionConfig:
    return PrecisionConfig(
        dtype=r.str_("dtype", "fp32", DTYPES),
        loss_scale=r.float_("lossScale", 0.0, minimum=0.0),
        initial_scale_power=r.int_("initialScalePower", 16, minimum=0),
        loss_scale_window=r.int_("lossScaleWindow", 1000, minimum=1),
        hysteresis=r.int_("hysteresis", 2, minimum=1),
        consecutive_hysteresis=r.bool_("consecutiveHysteresis", False),
        min_loss_scale=r.float_("minLossScale", 1.0, minimum=0.0),
        max_consecutive_non_finite=r.int_("maxConsecutiveNonFinite", 10, minimum=0),
    )


def _optimizer(r: _Reader) -> OptimizerConfig:
    betas = r.raw("betas", [0.9, 0.999])
    if not (isinstance(betas, list | tuple) and len(betas) == 2):
        raise SpecError(f"{r.path}.betas must be a list of two numbers, got {betas!r}")
    type_ = r.str_("type", "AdamW", OPTIMIZERS)
    return OptimizerConfig(
        type=type_,
        lr=r.float_("lr", 3e-4, minimum=0.0),
        betas=(float(betas[0]), float(betas[1])),
        eps=r.float_("eps", 1e-8, minimum=0.0),
        weight_decay=r.float_("weightDecay", 0.0 if type_ == "SGD" else 0.01, minimum=0.0),
        momentum=r.float_("momentum", 0.0, minimum=0.0),
        nesterov=r.bool_("nesterov", False),
    )


def _checkpoint(r: _Reader) -> CheckpointConfig:
    storage, init = r.sub("storage"), r.sub("initFrom")
    return CheckpointConfig(
        interval_steps=r.int_("intervalSteps", 100, minimum=0),
        keep=r.int_("keep", 3, minimum=1),
        async_=r.bool_("async", False),
        mount_path=storage.str_("mountPath", "/checkpoints"),
        claim_name=storage.str_("claimName", None),
        sub_path=storage.str_("subPath", None),
        init_from=init.str_("path", None),
        init_mode=init.str_("mode", "weights", ("weights", "full")),
        save_timeout_seconds=r.float_("saveTimeoutSeconds", 120.0, minimum=1.0),
    )


def parse_spec(spec: Mapping[str, Any], name: str = "kubetrain") -> JobConfig:
    """Plain-dict spec (camelCase, snake_case accepted) → JobConfig. Raises SpecError."""
    root = _Reader("spec", spec)
    workers = root.sub("workers")
    elastic = root.sub("elastic")
    sched = root.sub("lrSchedule")
    cfg = JobConfig(
        name=name,
        workers=WorkersConfig(
            replicas=workers.int_("replicas", 1, minimum=0),
            gpus_per_worker=workers.int_("gpusPerWorker", None, minimum=0),
            procs_per_worker=workers.int_("procsPerWorker", None, minimum=1),
        ),
        model=_model(root.sub("model")),
        data=_data(root.sub("data")),
        training=_training(root.sub("training")),
        parallel=_parallel(root.sub("parallelism")),
        precision=_precision(root.sub("precision")),
        optimizer=_optimizer(root.sub("optimizer")),
        schedule=ScheduleConfig(type=sched.str_("type", None), params=sched.dict_("params")),
        checkpoint=_checkpoint(root.sub("checkpoint")),
        elastic=ElasticConfig(
            collective_timeout_seconds=elastic.float_("collectiveTimeoutSeconds", 300.0, minimum=1.0)
        ),
    )
    check_static(cfg)
    return cfg


def check_static(cfg: JobConfig) -> None:
    """Combinations that are impossible whatever the world size or hardware."""
    if cfg.parallel.tensor_parallel != 1:
        raise SpecError("spec.parallelism.tensorParallel > 1 is not supported by this trainer yet (use 1)")
    if cfg.parallel.sync_mode != "allreduce" and cfg.parallel.strategy != "ddp":
        raise SpecError(
            f"spec.parallelism.sync.mode {cfg.parallel.sync_mode} replicates the model: it needs "
            f"spec.parallelism.strategy ddp, not {cfg.parallel.strategy}"
        )
    if cfg.parallel.sync_mode == "powerSGD" and cfg.parallel.sync.power_sgd_start_step < 2:
        raise SpecError(
            "spec.parallelism.sync.powerSGD.startStep must be >= 2, got "
            f"{cfg.parallel.sync.power_sgd_start_step}: torch's PowerSGD hook (error feedback and warm "
            "start on) can compress only after DDP's first two iterations, which rebuild its buckets"
        )
    if cfg.precision.dtype != "fp16" and cfg.precision.loss_scale not in (0.0,):
        raise SpecError(f"spec.precision.lossScale applies to fp16 only (dtype is {cfg.precision.dtype})")
    if cfg.model.entrypoint is None and cfg.model.seq_len < 1:
        raise SpecError("spec.model.seqLen must be >= 1")


# --------------------------------------------------------------------------- loading


def _split_job(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """Accept a whole TrainingJob (apiVersion/kind/metadata/spec) or just its spec."""
    if "spec" in obj and ({"kind", "apiVersion", "metadata"} & set(obj) or len(obj) == 1):
        meta = obj.get("metadata") or {}
        return obj["spec"] or {}, str(meta.get("name") or "kubetrain")
    return obj, "kubetrain"


def _format_validation_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return f"invalid spec: {e}"
    parts = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"spec.{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "invalid spec: " + "; ".join(parts)


def _resolve_with_api(spec: Any, world_size: int | None) -> Mapping[str, Any]:
    """Validate with ``kubetrain.api`` and merge DeepSpeed keys, when those modules exist."""
    try:
        api = importlib.import_module("kubetrain.api")
    except ImportError:
        api = None
    model_cls = getattr(api, "TrainingJobSpec", None) if api is not None else None
    if model_cls is None:
        if isinstance(spec, Mapping):
            return spec
        raise SpecError(f"cannot read a spec of type {type(spec).__name__} without kubetrain.api")
    if not isinstance(spec, model_cls):
        try:
            spec = model_cls.model_validate(dict(spec))
        except Exception as e:  # pydantic.ValidationError, kept import-free
            raise SpecError(_format_validation_error(e)) from None
    try:
        ds = importlib.import_module("kubetrain.api.deepspeed")
    except ImportError:
        ds = None
    resolve = getattr(ds, "resolve", None)
    if resolve is not None:
        try:
            spec = resolve(spec, world_size)
        except (ValueError, TypeError) as e:
            raise SpecError(f"invalid spec.deepspeed: {e}") from None
    dumped = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped if isinstance(dumped, Mapping) else {}


def from_spec(obj: Any, name: str | None = None, world_size: int | None = None) -> JobConfig:
    """TrainingJob / spec (dict or ``kubetrain.api`` model) → JobConfig.

    ``world_size`` is the data-parallel size DeepSpeed's batch rule is resolved at
    (``train_batch_size = micro x accumulation x world``); None: the job's nominal size.
    """
    job_name = "kubetrain"
    if isinstance(obj, Mapping):
        obj, job_name = _split_job(obj)
    resolved = _resolve_with_api(obj, world_size)
    return parse_spec(resolved, name=name or job_name)


def load_spec_text(text: str, origin: str) -> Any:
    """JSON or YAML text → Python object."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml
    except ImportError:
        raise SpecError(f"{origin}: not JSON and PyYAML is not installed") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{origin}: not valid JSON or YAML: {e}") from None


def load(path: str | None = None, env_var: str = "KUBETRAIN_SPEC") -> JobConfig:
    """Read the spec from a file (JSON/YAML); without one from ``$KUBETRAIN_SPEC_FILE`` (a path) or
    ``$KUBETRAIN_SPEC`` (the text). DeepSpeed keys resolve at ``$WORLD_SIZE`` when torchrun set it."""
    path = path or os.environ.get(f"{env_var}_FILE") or None
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SpecError(f"cannot read spec file {path}: {e}") from None
        obj = load_spec_text(text, path)
    elif os.environ.get(env_var):
        obj = load_spec_text(os.environ[env_var], f"${env_var}")
    else:
        raise SpecError(f"no spec given: pass --spec FILE or set {env_var}_FILE or {env_var}")
    if not isinstance(obj, Mapping):
        raise SpecError("the spec must be a mapping (a TrainingJob or its spec)")
    world = os.environ.get("WORLD_SIZE")
    return from_spec(obj, world_size=int(world) if world else None)
