"""`scheduler`: the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import DS, DS_SCHEDULERS, KUBETRAIN_DEFAULTS, SETS_OWN_LR, TORCH_SCHEDULERS
from kubetrain.api.deepspeed.values import fmt, normalise, suggest
from kubetrain.api.schedules import SCHEDULE_TYPES, ScheduleError, make_schedule


def resolve_schedule(ctx: Context, base_lr: float, opt_type: str, lr_given: bool) -> api.LRScheduleSpec:
    ls = ctx.spec.lr_schedule
    sec = ctx.section("scheduler")
    base = f"{DS}.scheduler"
    ds_type: str | None = None
    ds_params: dict[str, Any] = {}
    if sec is not None:
        raw_type = sec.get("type")
        raw_params = sec.get("params")
        if raw_params is not None and not isinstance(raw_params, Mapping):
            ctx.problem(f"{base}.params", f"must be an object (got {fmt(raw_params)})", "write params: {...}")
        elif raw_params is not None:
            ds_params = dict(raw_params)
        if raw_type is None:
            ctx.problem(f"{base}.type", "is missing: DeepSpeed ignores a scheduler section without a type",
                         f"add type (one of {', '.join(DS_SCHEDULERS)}) or remove the scheduler section")
        elif not isinstance(raw_type, str):
            ctx.problem(f"{base}.type", f"must be a string (got {fmt(raw_type)})", "write type: WarmupLR")
        elif raw_type in DS_SCHEDULERS:
            ds_type = raw_type
        elif raw_type == "Constant":
            ctx.problem(f"{base}.type", "'Constant' is not a DeepSpeed scheduler",
                         "remove the scheduler section for a constant lr (or use spec.lrSchedule.type: Constant)")
        elif raw_type in TORCH_SCHEDULERS:
            ctx.problem(f"{base}.type", f"torch.optim.lr_scheduler.{raw_type} is accepted by DeepSpeed but "
                         "not supported by Kubetrain", f"use one of {', '.join(DS_SCHEDULERS)}")
        else:
            hint = suggest(raw_type, DS_SCHEDULERS)
            ctx.problem(f"{base}.type", f"unknown scheduler type '{raw_type}' (DeepSpeed rejects it)",
                         hint or f"use one of {', '.join(DS_SCHEDULERS)}")
        ds_params.update(_fill_autos(ctx, base_lr))
    type_ = ctx.pick("spec.lrSchedule.type", ls.type, f"{base}.type", ds_type)
    typed_params = normalise(ls.params, "spec.lrSchedule.params", []) if ls.params is not None else None
    params: dict[str, Any] = dict(ds_params)
    for k, v in (typed_params or {}).items():
        if k in ds_params:
            ctx.pick(f"spec.lrSchedule.params.{k}", v, f"{base}.params.{k}", ds_params[k])
        params[k] = v
    if type_ is None:
        type_ = KUBETRAIN_DEFAULTS["lrSchedule.type"]
    from_typed = set(typed_params or {})
    if type_ in SCHEDULE_TYPES and not any(p.path.startswith((f"{base}.type", "spec.lrSchedule.type"))
                                           for p in ctx.problems):
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
            ctx.problem(path, message, fix)
        else:
            _schedule_notes(ctx, type_, sched.params, params, base_lr, opt_type, lr_given)
    resolved_params = params if (params or ls.params is not None or sec is not None) else None
    return api.LRScheduleSpec(type=type_, params=resolved_params)

def _schedule_notes(ctx: Context, type_: str, resolved: Mapping[str, Any], given: Mapping[str, Any], base_lr: float,
                    opt_type: str, lr_given: bool) -> None:
    peak_key = SETS_OWN_LR.get(type_)
    if peak_key is not None:
        if type_ == "WarmupDecayLR" and "warmup_max_lr" not in given and resolved["warmup_max_lr"] != base_lr:
            ctx.notes.append(f"WarmupDecayLR warms up to warmup_max_lr={fmt(resolved['warmup_max_lr'])} "
                              f"(DeepSpeed's default), not to the optimizer lr {fmt(base_lr)}; set "
                              "warmup_max_lr to change it")
        elif lr_given and resolved[peak_key] != base_lr:
            ctx.notes.append(f"the optimizer lr {fmt(base_lr)} is not used: {type_} sets the lr itself "
                              f"({peak_key}={fmt(resolved[peak_key])})")
    if type_ == "WarmupLR" and lr_given and resolved.get("warmup_max_lr") not in (None, base_lr) \
            and "warmup_max_lr" in given:
        ctx.notes.append(f"the optimizer lr {fmt(base_lr)} is not used: WarmupLR warms up to "
                          f"warmup_max_lr={fmt(resolved['warmup_max_lr'])}")
    if type_ == "OneCycle" and opt_type == "SGD" and resolved.get("cycle_momentum"):
        ctx.notes.append("OneCycle's cycle_momentum has no effect with SGD: DeepSpeed cycles Adam betas only "
                          "(it disables cycle_momentum for optimizers without betas)")


def _fill_autos(ctx: Context, base_lr: float) -> dict[str, Any]:
    """Scheduler "auto" params as the Hugging Face integration fills them: warmup_min_lr 0, warmup_max_lr the
    optimizer lr, warmup_num_steps the typed warmup (required), total_num_steps the typed one else
    training.maxSteps."""
    typed = ctx.spec.lr_schedule.params or {}
    fill: dict[str, Any] = {
        "warmup_min_lr": 0.0,
        "warmup_max_lr": base_lr,
        "warmup_num_steps": typed.get("warmup_num_steps"),
        "total_num_steps": typed.get("total_num_steps", ctx.spec.training.max_steps),
    }
    out: dict[str, Any] = {}
    for key in sorted(k for k in ctx.auto_keys if k.startswith("scheduler.params.")):
        name = key.rsplit(".", 1)[-1]
        if name == "warmup_num_steps" and fill[name] is None:
            # Hugging Face's default warmup is 0 steps, which DeepSpeed 0.19's warmup schedulers refuse.
            ctx.problem(f"{DS}.{key}", "is \"auto\", which takes spec.lrSchedule.params.warmup_num_steps, and "
                        "that is not set (DeepSpeed needs a warmup of at least 1 step)",
                        "set spec.lrSchedule.params.warmup_num_steps")
        elif name in fill:
            out[name] = fill[name]
        else:
            ctx.problem(f"{DS}.{key}", "is \"auto\", which only warmup_min_lr, warmup_max_lr, warmup_num_steps "
                        "and total_num_steps can be", "write a value")
    return out
