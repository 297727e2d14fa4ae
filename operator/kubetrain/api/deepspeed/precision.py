"""`fp16`, `bf16` (legacy `bfloat16`): the dtype and the loss-scale fields."""

from __future__ import annotations

from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import (
    BF16_KEYS,
    DS,
    FP16_DEFAULTS,
    FP16_KEYS,
    FP16_TYPED,
    KUBETRAIN_DEFAULTS,
)
from kubetrain.api.deepspeed.values import fmt


def resolve_precision(ctx: Context) -> api.PrecisionSpec:
    pr = ctx.spec.precision
    fp16 = ctx.section("fp16")
    bf16_key = "bf16" if "bf16" in ctx.ds else ("bfloat16" if "bfloat16" in ctx.ds else None)
    if "bf16" in ctx.ds and "bfloat16" in ctx.ds:
        ctx.notes.append(f"{DS}.bfloat16 is ignored: {DS}.bf16 takes precedence (as in DeepSpeed)")
    bf16 = ctx.section(bf16_key) if bf16_key else None
    fp16_on = bf16_on = None
    if fp16 is not None:
        ctx.check_keys("fp16", fp16, FP16_KEYS)
        fp16_on = ctx.boolean(f"{DS}.fp16.enabled", fp16.get("enabled"))
        for k in ("auto_cast", "consecutive_hysteresis", "fp16_master_weights_and_grads"):
            ctx.boolean(f"{DS}.fp16.{k}", fp16.get(k))
    if bf16 is not None and bf16_key:
        ctx.check_keys(bf16_key, bf16, BF16_KEYS)
        for k in sorted(BF16_KEYS - {"enabled"}):
            ctx.boolean(f"{DS}.{bf16_key}.{k}", bf16.get(k))
        bf16_on = ctx.boolean(f"{DS}.{bf16_key}.enabled", bf16.get("enabled"))
    if fp16_on and bf16_on:
        ctx.problem(f"{DS}.fp16.enabled",
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
            ctx.problem("spec.precision.dtype",
                         f"spec.precision.dtype={typed} contradicts {DS}.{key}.enabled={fmt(on)}",
                         "remove one of them or make them agree")
    dtype = typed or ("fp16" if fp16_on else "bf16" if bf16_on else KUBETRAIN_DEFAULTS["precision.dtype"])
    autos = [f"{k}.enabled" for k in ("fp16", "bf16", "bfloat16") if ctx.is_auto(f"{k}.enabled")]
    if autos and typed is None and fp16_on is None and bf16_on is None:
        ctx.notes.append(f"{DS}.{{{', '.join(autos)}}} {'is' if len(autos) == 1 else 'are'} \"auto\", which "
                         f"takes spec.precision.dtype, and that is not set: training runs in {dtype} (set "
                         "spec.precision.dtype to bf16 or fp16 for mixed precision)")
    fp16 = fp16 or {}
    ds_vals = {
        "loss_scale": ctx.number(f"{DS}.fp16.loss_scale", fp16.get("loss_scale"), ge=0.0),
        "initial_scale_power": ctx.integer(f"{DS}.fp16.initial_scale_power", fp16.get("initial_scale_power"),
                                            ge=0, le=64),
        "loss_scale_window": ctx.integer(f"{DS}.fp16.loss_scale_window", fp16.get("loss_scale_window"), ge=1),
        "hysteresis": ctx.integer(f"{DS}.fp16.hysteresis", fp16.get("hysteresis"), ge=1),
        "consecutive_hysteresis": fp16.get("consecutive_hysteresis")
        if isinstance(fp16.get("consecutive_hysteresis"), bool) else None,
        # DeepSpeed's min_loss_scale is an int field (1.0 passes, 0.5 does not).
        "min_loss_scale": ctx.integer(f"{DS}.fp16.min_loss_scale", fp16.get("min_loss_scale"), ge=1),
    }
    update: dict[str, Any] = {"dtype": dtype}
    if dtype == "fp16":
        for key, (attr, wire) in FP16_TYPED.items():
            got = ctx.pick(f"spec.precision.{wire}", getattr(pr, attr), f"{DS}.fp16.{key}", ds_vals[key])
            got = FP16_DEFAULTS[key] if got is None else got
            update[attr] = float(got) if key in ("loss_scale", "min_loss_scale") else got
    else:
        ignored = [k for k in FP16_TYPED if k in fp16]
        if ignored:
            ctx.notes.append(f"{DS}.fp16.{{{', '.join(ignored)}}} ha{'s' if len(ignored) == 1 else 've'} no "
                              f"effect: the precision is {dtype}, not fp16")
    return pr.model_copy(update=update)
