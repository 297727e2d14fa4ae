"""`zero_optimization`: the stage as parallelism.strategy, CPU offload as parallelism.offload, and
DeepSpeed's own checks of the section's values (removed keys, field types and bounds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import (
    DS,
    KUBETRAIN_DEFAULTS,
    OFFLOAD_DEVICES,
    OFFLOAD_NO_OP,
    OFFLOAD_OPTIMIZER_KEYS,
    OFFLOAD_PARAM_KEYS,
    OFFLOAD_PIN_DEFAULT,
    REMOVED_ZERO,
    STRATEGY_OF_STAGE,
    ZERO_INT_FIELDS,
    ZERO_KEYS,
)
from kubetrain.api.deepspeed.values import fmt, is_int, same

Z = f"{DS}.zero_optimization"


def zero_section(ctx: Context) -> dict[str, Any]:
    zo = ctx.ds.get("zero_optimization")
    if zo is None or isinstance(zo, bool):
        return {}
    return ctx.section("zero_optimization") or {}


def resolve_strategy(ctx: Context) -> str:
    zo = ctx.ds.get("zero_optimization")
    stage: int | None = None
    path = f"{Z}.stage"
    if isinstance(zo, bool):
        stage, path = (1 if zo else 0), Z
    sec = zero_section(ctx)
    if sec:
        for key, reason in REMOVED_ZERO.items():
            if key in sec:
                ctx.problem(f"{Z}.{key}", f"{reason}: DeepSpeed 0.19 rejects this key", "remove it")
        ctx.check_keys("zero_optimization", {k: v for k, v in sec.items() if k not in REMOVED_ZERO}, ZERO_KEYS)
        _check_numbers(ctx, sec)
        raw = sec.get("stage")
        if raw is not None:
            if not is_int(raw) or raw not in STRATEGY_OF_STAGE:
                ctx.problem(path, f"must be 0, 1, 2 or 3 (got {fmt(raw)}; DeepSpeed's maximum ZeRO "
                            "stage is 3)", "use 0 (ddp), 1, 2 or 3")
            else:
                stage = raw
    ds_strategy = STRATEGY_OF_STAGE[stage] if stage is not None else None
    typed = ctx.spec.parallelism.strategy
    if typed is not None and ds_strategy is not None and typed != ds_strategy:
        ctx.problem("spec.parallelism.strategy",
                    f"spec.parallelism.strategy={typed} contradicts {path}={fmt(zo if isinstance(zo, bool) else stage)}"
                    f" (= {ds_strategy})", "remove one of them or make them agree")
    return typed or ds_strategy or KUBETRAIN_DEFAULTS["parallelism.strategy"]


def _check_numbers(ctx: Context, sec: Mapping[str, Any]) -> None:
    """DeepSpeedZeroConfig's integer fields with their bounds (an integral float like 2e8 is accepted)."""
    for key, (op, bound) in ZERO_INT_FIELDS.items():
        value = sec.get(key)
        if value is None or ctx.is_auto(f"zero_optimization.{key}"):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_int(value):
            ctx.problem(f"{Z}.{key}", f"must be an integer (got {fmt(value)}; DeepSpeed rejects it)",
                        "write a whole number")
        elif (op == ">" and value <= bound) or (op == ">=" and value < bound):
            ctx.problem(f"{Z}.{key}", f"must be {op} {bound} (got {fmt(value)}; DeepSpeed rejects it)",
                        f"set a value {op} {bound} or remove the key (it has no effect in Kubetrain)")


def _offload_block(ctx: Context, sec: Mapping[str, Any], key: str, allowed: frozenset[str]) -> tuple[str, bool]:
    """(device, pin_memory) of offload_optimizer / offload_param; device 'none' when absent or invalid."""
    block = sec.get(key)
    path = f"{Z}.{key}"
    if block is None:
        return "none", OFFLOAD_PIN_DEFAULT
    if not isinstance(block, Mapping):
        ctx.problem(path, f"must be an object (got {fmt(block)})", f"write {key}: {{device: cpu}}")
        return "none", OFFLOAD_PIN_DEFAULT
    ctx.check_keys(f"zero_optimization.{key}", block, allowed)
    device = block.get("device", "none")
    if device not in OFFLOAD_DEVICES:
        ctx.problem(f"{path}.device", f"must be one of {', '.join(OFFLOAD_DEVICES)} (got {fmt(device)}; "
                    "DeepSpeed rejects it)", "use cpu, or none for no offload")
        return "none", OFFLOAD_PIN_DEFAULT
    if device == "nvme":
        ctx.problem(f"{path}.device", "NVMe offload (ZeRO-Infinity) is not supported by Kubetrain",
                    "use device: cpu (FSDP2 CPU offload to host memory) with zero_optimization.stage 2 or 3")
        return "none", OFFLOAD_PIN_DEFAULT
    pin = ctx.boolean(f"{path}.pin_memory", block.get("pin_memory", OFFLOAD_PIN_DEFAULT))
    if device == "cpu":
        for knob, values in OFFLOAD_NO_OP.items():
            if knob in block and values is not None and not any(same(block[knob], v) for v in values):
                ctx.notes.append(f"{path}.{knob}={fmt(block[knob])} has no equivalent in FSDP2's CPU offload and "
                                 "is ignored")
    return device, OFFLOAD_PIN_DEFAULT if pin is None else pin


def resolve_offload(ctx: Context, strategy: str) -> api.OffloadSpec | None:
    """offload_optimizer / offload_param (and the legacy cpu_offload* flags) -> parallelism.offload."""
    sec = zero_section(ctx)
    opt_dev, opt_pin = _offload_block(ctx, sec, "offload_optimizer", OFFLOAD_OPTIMIZER_KEYS)
    par_dev, par_pin = _offload_block(ctx, sec, "offload_param", OFFLOAD_PARAM_KEYS)
    # The deprecated flags become {device: cpu} with the block's defaults (DeepSpeed does not carry
    # cpu_offload_use_pin_memory over).
    if sec.get("cpu_offload") is True and "offload_optimizer" not in sec:
        opt_dev, opt_pin = "cpu", OFFLOAD_PIN_DEFAULT
    if sec.get("cpu_offload_param") is True and "offload_param" not in sec:
        par_dev, par_pin = "cpu", OFFLOAD_PIN_DEFAULT
    if par_dev == "cpu" and strategy != "zero3":
        ctx.notes.append(f"{Z}.offload_param applies only at ZeRO stage 3 (DeepSpeed ignores it at "
                         f"{strategy}); parameters are not offloaded")
        par_dev = "none"
    ds_device = "cpu" if "cpu" in (opt_dev, par_dev) else None
    typed = ctx.spec.parallelism.offload
    typed_device = typed.device if typed is not None else None
    if typed_device is not None and ds_device is not None and typed_device != ds_device:
        ctx.problem("spec.parallelism.offload.device", f"spec.parallelism.offload.device={typed_device} "
                    f"contradicts {Z}.offload_*.device=cpu", "remove one of them or make them agree")
    device = typed_device or ds_device
    if device != "cpu":
        return typed
    if strategy not in ("zero2", "zero3"):
        ctx.problem(f"{Z}.offload_optimizer" if ds_device else "spec.parallelism.offload.device",
                    f"CPU offload needs ZeRO stage 2 or 3 in Kubetrain (FSDP2's CPUOffloadPolicy); {strategy} "
                    "has no equivalent", "set zero_optimization.stage 2 or 3 (or parallelism.strategy zero2/zero3), "
                    "or remove the offload")
        return typed
    pin = typed.pin_memory if typed is not None and typed.pin_memory is not None else (
        par_pin if par_dev == "cpu" else opt_pin)
    if ds_device and (opt_dev != "cpu" or par_dev != "cpu"):
        moved = "parameter shards" if opt_dev == "cpu" else "optimizer state and step"
        ctx.notes.append(f"FSDP2's CPU offload moves parameters, gradients and the optimizer step together: the "
                         f"{moved} go to host memory too")
    return api.OffloadSpec(device="cpu", pin_memory=pin)
