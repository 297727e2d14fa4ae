"""The worker's configuration: the TrainingJob spec as ``kubetrain.api`` models, resolved once.

One path, no second set of defaults or bounds: the spec (a whole TrainingJob or just its spec;
a dict or a model) is checked by ``kubetrain.api`` -- the models' fields and bounds, then the
semantic checks of ``kubetrain validate`` (``validate.SEMANTIC_CHECKS``), exactly what the
operator checks; the CRD's CEL rules were enforced before a worker starts (API server admission,
the launcher's preflight, ``kubetrain local``) -- and DeepSpeed keys are merged into the typed
fields at the real data-parallel size by ``kubetrain.api.deepspeed.resolve``, which also fills
every default (``kubetrain.api.deepspeed.KUBETRAIN_DEFAULTS`` and the models' own).

The sections of ``JobConfig`` ARE those models (``cfg.training`` is a ``kubetrain.api.TrainingSpec``).
Its properties only derive values from them: the GPT shape after the preset, the resolved
scalars with non-optional types, the data-parallel size. This module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from kubetrain import api
from kubetrain.api import constants as k
from kubetrain.api import validate
from kubetrain.api.deepspeed import DeepSpeedConfigError, resolve
from kubetrain.api.modelsize import DEFAULT_PRESET, GPTSize, model_shape
from kubetrain.api.problems import Problem
from kubetrain.api.specfile import SpecFileError, load_one

from .errors import SpecError

DEFAULT_JOB_NAME = "kubetrain"  # a spec without metadata.name (files with only a spec)

T = TypeVar("T")


def resolved(value: T | None, field: str) -> T:
    """A field ``deepspeed.resolve`` always fills; None here is a bug, not a user error."""
    if value is None:
        raise RuntimeError(f"spec.{field} was not resolved (kubetrain.api.deepspeed.resolve fills it)")
    return value


@dataclass(frozen=True)
class JobConfig:
    """The resolved spec plus what is derived from it. ``world_size``: the processes it was
    resolved for (None: the job's nominal size)."""

    name: str
    spec: api.TrainingJobSpec
    world_size: int | None = None

    # -- the sections: kubetrain.api models ------------------------------------------------
    @property
    def workers(self) -> api.WorkersSpec:
        return self.spec.workers

    @property
    def model(self) -> api.ModelSpec:
        return self.spec.model

    @property
    def data(self) -> api.DataSpec:
        return self.spec.data

    @property
    def training(self) -> api.TrainingSpec:
        return self.spec.training

    @property
    def parallel(self) -> api.ParallelismSpec:
        return self.spec.parallelism

    @property
    def precision(self) -> api.PrecisionSpec:
        return self.spec.precision

    @property
    def optimizer(self) -> api.OptimizerSpec:
        return self.spec.optimizer

    @property
    def schedule(self) -> api.LRScheduleSpec:
        return self.spec.lr_schedule

    @property
    def checkpoint(self) -> api.CheckpointSpec:
        return self.spec.checkpoint

    @property
    def elastic(self) -> api.ElasticSpec:
        return self.spec.elastic

    @property
    def sync(self) -> api.SyncSpec:
        """``spec.parallelism.sync`` (its model's defaults when absent)."""
        return self.spec.parallelism.sync or api.SyncSpec()

    # -- derived values ----------------------------------------------------------------------
    @cached_property
    def shape(self) -> GPTSize:
        """The GPT sizes after the preset (``kubetrain.api.modelsize.model_shape``)."""
        return model_shape(self.spec.model)

    @property
    def strategy(self) -> str:
        return resolved(self.spec.parallelism.strategy, "parallelism.strategy")

    @property
    def sync_mode(self) -> str:
        return self.sync.mode

    @property
    def dtype(self) -> str:
        return resolved(self.spec.precision.dtype, "precision.dtype")

    @property
    def lr(self) -> float:
        return resolved(self.spec.optimizer.lr, "optimizer.lr")

    @property
    def gradient_clipping(self) -> float:
        return resolved(self.spec.training.gradient_clipping, "training.gradientClipping")

    @property
    def global_batch_size(self) -> int:
        return resolved(self.spec.training.global_batch_size, "training.globalBatchSize")

    @property
    def schedule_type(self) -> str:
        return resolved(self.spec.lr_schedule.type, "lrSchedule.type")

    @property
    def gpus_requested(self) -> int | None:
        """``workers.gpusPerWorker`` when written; None: not said (use a GPU when one is present)."""
        w = self.spec.workers
        return w.gpus_per_worker if "gpus_per_worker" in w.model_fields_set else None

    def model_summary(self) -> dict[str, Any]:
        """The model as checkpoints and exports record it (sizes after the preset)."""
        m, s = self.spec.model, self.shape
        return {
            "preset": (m.preset or DEFAULT_PRESET) if m.entrypoint is None else None,
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_model": s.d_model,
            "vocab_size": s.vocab_size,
            "seq_len": s.seq_len,
            "tie_embeddings": m.tie_embeddings,
            "entrypoint": m.entrypoint,
            "entrypoint_args": dict(m.entrypoint_args or {}),
        }


# --------------------------------------------------------------------------- validation


def _one_line(problems: list[Problem]) -> str:
    return "invalid spec: " + "; ".join(str(p) for p in problems)


def _as_job_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A whole TrainingJob (apiVersion/kind/metadata/spec) as is; a bare spec wrapped into one."""
    whole = bool({"apiVersion", "kind"} & set(obj)) or ("spec" in obj and set(obj) <= {"spec", "metadata"})
    if whole:
        return dict(obj)
    return {"apiVersion": k.API_VERSION, "kind": k.KIND, "metadata": {"name": DEFAULT_JOB_NAME}, "spec": dict(obj)}


def _checked_job(obj: Any) -> api.TrainingJob:
    """The models, then the semantic checks: the same functions, in the same order, as the operator's."""
    if isinstance(obj, api.TrainingJobSpec):
        job = api.TrainingJob(metadata={"name": DEFAULT_JOB_NAME}, spec=obj)
        raw: dict[str, Any] = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    elif isinstance(obj, api.TrainingJob):
        job, raw = obj, obj.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    elif isinstance(obj, Mapping):
        whole = _as_job_object(obj)
        try:
            job = api.TrainingJob.model_validate(whole)
        except ValidationError:
            raise SpecError(_one_line(validate.model_problems(whole))) from None
        raw = whole.get("spec") or {}
    else:
        raise SpecError(f"the spec must be a mapping (a TrainingJob or its spec), got {type(obj).__name__}")
    problems = [p for check in validate.SEMANTIC_CHECKS for p in check(job.spec, raw)]
    if problems:
        raise SpecError(_one_line(list(dict.fromkeys(problems))))
    return job


def from_spec(obj: Any, name: str | None = None, world_size: int | None = None) -> JobConfig:
    """TrainingJob / spec (dict or ``kubetrain.api`` model) -> JobConfig. Raises SpecError.

    ``world_size``: the training processes; DeepSpeed's batch rule (``train_batch_size = micro x
    accumulation x data-parallel size``) is resolved at ``world_size / (tensorParallel x
    pipelineParallel)``. None:
    the job's nominal size (workers.replicas x procsPerWorker).
    """
    job = _checked_job(obj)
    dp = None if world_size is None else max(1, world_size // job.spec.parallelism.model_parallel)
    try:
        spec = resolve(job.spec, dp)
    except DeepSpeedConfigError as e:
        raise SpecError(_one_line(e.problems)) from None
    except ValueError as e:  # a world size resolve cannot use
        raise SpecError(f"invalid spec: {e}") from None
    return JobConfig(name or str(job.metadata.get("name") or DEFAULT_JOB_NAME), spec, world_size)


# --------------------------------------------------------------------------- loading


def load(path: str | None = None) -> JobConfig:
    """Read the spec from a file (YAML or JSON); without one from ``$KUBETRAIN_SPEC_FILE`` (a path)
    or ``$KUBETRAIN_SPEC`` (the text). DeepSpeed keys resolve at ``$WORLD_SIZE`` when torchrun set it."""
    path = path or os.environ.get(k.ENV_SPEC_FILE) or None
    obj: Any
    if path:
        try:
            obj = load_one(path)
        except SpecFileError as e:
            raise SpecError(str(e)) from None
    elif os.environ.get(k.ENV_SPEC):
        try:
            obj = yaml.safe_load(os.environ[k.ENV_SPEC])  # JSON is YAML
        except yaml.YAMLError as e:
            raise SpecError(f"${k.ENV_SPEC}: not valid JSON or YAML: {e}") from None
    else:
        raise SpecError(f"no spec given: pass --spec FILE or set {k.ENV_SPEC_FILE} or {k.ENV_SPEC}")
    world = os.environ.get("WORLD_SIZE")
    return from_spec(obj, world_size=int(world) if world else None)
