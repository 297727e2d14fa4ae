"""What DeepSpeed 0.19's config parser refuses outside the blocks' own readers: removed features, and the
cross-field checks of `DeepSpeedConfig._do_error_check`."""

from __future__ import annotations

from typing import Any

from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import DS, REMOVED_TOP


def removed_blocks(ctx: Context) -> None:
    for key, reason in REMOVED_TOP.items():
        if key in ctx.ds:
            ctx.problem(f"{DS}.{key}", f"{reason}; DeepSpeed 0.19 rejects a config that still has it", "remove it")


def cross_checks(ctx: Context, strategy: str) -> None:
    zero = strategy != "ddp"
    fp16: dict[str, Any] = ctx.ds["fp16"] if isinstance(ctx.ds.get("fp16"), dict) else {}
    bf16: dict[str, Any] = next((ctx.ds[k] for k in ("bf16", "bfloat16") if isinstance(ctx.ds.get(k), dict)), {})
    needs_zero = [
        ("fp16.fp16_master_weights_and_grads", fp16.get("fp16_master_weights_and_grads") is True),
        ("bf16.bf16_master_weights_and_grads", bf16.get("bf16_master_weights_and_grads") is True),
        ("bf16.bf16_optimizer_states", bf16.get("bf16_optimizer_states") is True),
    ]
    for key, on in needs_zero:
        if on and not zero:
            ctx.problem(f"{DS}.{key}", "needs ZeRO stage 1, 2 or 3 (DeepSpeed rejects it at stage 0)",
                        "set zero_optimization.stage 1-3 or remove it")
    if bf16.get("bf16_optimizer_states") is True and bf16.get("bf16_master_weights_and_grads") is not True:
        ctx.problem(f"{DS}.bf16.bf16_optimizer_states", "needs bf16_master_weights_and_grads: true (DeepSpeed "
                    "rejects it otherwise)", "set bf16.bf16_master_weights_and_grads: true or remove it")
    if ctx.ds.get("gradient_allreduce_op") == "sum" and strategy == "zero3":
        ctx.problem(f"{DS}.gradient_allreduce_op", "'sum' is not supported with ZeRO stage 3 (DeepSpeed rejects "
                    "it)", "remove it (the default averages)")
