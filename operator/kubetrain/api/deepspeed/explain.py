"""`kubetrain validate --explain`: every DeepSpeed key -> what the trainer does with it (typed field, value,
source), then the DeepSpeed-settable typed fields no key set."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.context import Resolution
from kubetrain.api.deepspeed.keys import DS, GATHER_16BIT_KEYS, NO_OP_KEYS, REMOVED_TOP, ZERO_AUTO_FROM_HIDDEN
from kubetrain.api.deepspeed.values import fmt
from kubetrain.api.modelsize import model_shape

# DeepSpeed key (dotted; '*' = any sub-key) -> typed field it sets.
TYPED_OF_KEY = {
    "train_batch_size": "training.globalBatchSize",
    "train_micro_batch_size_per_gpu": "training.microBatchSize",
    "gradient_accumulation_steps": "(derived) gradient accumulation",
    "gradient_clipping": "training.gradientClipping",
    "optimizer.type": "optimizer.type",
    "optimizer.params.lr": "optimizer.lr",
    "optimizer.params.betas": "optimizer.betas",
    "optimizer.params.eps": "optimizer.eps",
    "optimizer.params.weight_decay": "optimizer.weightDecay",
    "optimizer.params.momentum": "optimizer.momentum",
    "optimizer.params.nesterov": "optimizer.nesterov",
    "scheduler.type": "lrSchedule.type",
    "fp16.enabled": "precision.dtype",
    "bf16.enabled": "precision.dtype",
    "bfloat16.enabled": "precision.dtype",
    "fp16.loss_scale": "precision.lossScale",
    "fp16.initial_scale_power": "precision.initialScalePower",
    "fp16.loss_scale_window": "precision.lossScaleWindow",
    "fp16.hysteresis": "precision.hysteresis",
    "fp16.consecutive_hysteresis": "precision.consecutiveHysteresis",
    "fp16.min_loss_scale": "precision.minLossScale",
    "zero_optimization": "parallelism.strategy",
    "zero_optimization.stage": "parallelism.strategy",
    "zero_optimization.offload_optimizer": "parallelism.offload",
    "zero_optimization.offload_param": "parallelism.offload",
    "zero_optimization.cpu_offload": "parallelism.offload",
    "zero_optimization.cpu_offload_param": "parallelism.offload",
    "activation_checkpointing": "training.activationCheckpointing",
}
# Typed fields a DeepSpeed config can set, in the order they are listed.
TYPED_FIELDS = (
    "training.globalBatchSize", "training.microBatchSize", "training.gradientClipping",
    "training.activationCheckpointing", "optimizer.type", "optimizer.lr", "optimizer.betas", "optimizer.eps",
    "optimizer.weightDecay", "lrSchedule.type", "lrSchedule.params", "precision.dtype", "parallelism.strategy",
    "parallelism.offload",
)


@dataclass(frozen=True)
class Line:
    key: str  # dotted DeepSpeed key, or "" for a typed field no key set
    written: Any
    target: str  # typed field or what happens
    value: Any
    source: str  # written | auto | typed | default | ignored | no effect | error

    def __str__(self) -> str:
        if not self.key:
            return f"spec.{self.target} = {_shown(self.target, self.value)} ({self.source})"
        if self.target.startswith("("):
            right = f"{self.target[1:self.target.index(')')]} {self.target[self.target.index(')') + 2:]} = " \
                    f"{fmt(self.value)}"
        elif self.target.split(".")[0] in ("training", "optimizer", "lrSchedule", "precision", "parallelism"):
            right = f"spec.{self.target} = {_shown(self.target, self.value)}"
        else:
            right = self.target
        return f"{DS}.{self.key} = {fmt(self.written)} -> {right} ({self.source})"


def _shown(target: str, value: Any) -> str:
    if value is None and target == "training.microBatchSize":
        return "globalBatchSize / world size (decided at the real world size)"
    if value is None and target == "parallelism.offload":
        return "none"
    if value is None and target.startswith("precision."):
        return "(not used: the precision is not fp16)"
    return fmt(value)


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value and prefix.split(".")[-1] not in ("betas",):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _get(spec: api.TrainingJobSpec, dotted: str) -> Any:
    obj: Any = spec
    for part in dotted.split("."):
        name = next((n for n, f in type(obj).model_fields.items() if part in (n, f.alias)), part)
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj.model_dump(by_alias=True, exclude_none=True) if isinstance(obj, api.ApiModel) else obj


def _hidden_size(spec: api.TrainingJobSpec) -> int | None:
    """The built-in GPT's hidden size (the Hugging Face integration's `hidden_size`); None for entrypoints."""
    if spec.model.entrypoint:
        return None
    try:
        return int(model_shape(spec.model).d_model)
    except Exception:  # an invalid model gets its own problem elsewhere
        return None


def _typed_given(spec: api.TrainingJobSpec, dotted: str) -> bool:
    return _get(spec, dotted) not in (None, False)


def explain(spec: api.TrainingJobSpec, res: Resolution) -> list[Line]:
    raw = spec.deepspeed if isinstance(spec.deepspeed, Mapping) else {}
    problems = {p.path for p in res.problems}
    lines: list[Line] = []
    set_by_key: set[str] = set()
    for key, written in _leaves(raw):
        source = "auto" if key in res.auto else "written"
        full = f"{DS}.{key}"
        if any(p == full or p.startswith(f"{full}.") or full.startswith(f"{p}.") for p in problems):
            lines.append(Line(key, written, "rejected (see the error)", None, "error"))
            continue
        target = TYPED_OF_KEY.get(key)
        if target is None and key.startswith("scheduler.params."):
            target = "lrSchedule.params"
        if target is None and key.split(".")[0] == "zero_optimization" and key.split(".")[1] in (
                "offload_optimizer", "offload_param"):
            target = "parallelism.offload"
        if target is None and key.startswith("activation_checkpointing."):
            target = "training.activationCheckpointing"
        if target is not None:
            set_by_key.add(target)
            if target.startswith("("):
                lines.append(Line(key, written, target, res.gradient_accumulation_steps, source))
            else:
                lines.append(Line(key, written, target, _get(res.spec, target), source))
        elif key in res.unsupported or key.split(".")[0] in res.unsupported:
            lines.append(Line(key, written, "ignored: not supported (see the note)", None, "ignored"))
        elif key.split(".")[0] in ("tensorboard", "csv_monitor"):
            lines.append(Line(key, written, "written by the trainer under output_path/job_name", None, source))
        elif key.split(".")[-1] in GATHER_16BIT_KEYS:
            lines.append(Line(key, written, "final weights consolidated in 16 bits (final/model.safetensors)",
                              None, source))
        elif source == "auto" and key.split(".")[-1] in ZERO_AUTO_FROM_HIDDEN:
            hidden = _hidden_size(spec)
            value = ZERO_AUTO_FROM_HIDDEN[key.split(".")[-1]](hidden) if hidden else None
            what = f"{fmt(value)} from model.dModel {hidden}" if hidden else "unknown (entrypoint model)"
            lines.append(Line(key, written, f"{what}; no effect (Kubetrain has no buckets)", None, source))
        elif key in NO_OP_KEYS or key.split(".")[0] in NO_OP_KEYS or key.split(".")[0] in REMOVED_TOP:
            lines.append(Line(key, written, "no effect (a DeepSpeed logging or performance knob)", None,
                              "no effect"))
        else:
            lines.append(Line(key, written, "accepted, no effect in Kubetrain (see the notes)", None,
                              "no effect"))
    for typed in TYPED_FIELDS:
        if typed not in set_by_key:
            source = "typed" if _typed_given(spec, typed) else "default"
            lines.append(Line("", None, typed, _get(res.spec, typed), source))
    return lines
