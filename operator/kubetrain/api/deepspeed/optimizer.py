"""`optimizer` and `gradient_clipping`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import (
    DEEPSPEED_OPTIMIZERS,
    DS,
    FUSED_ADAM_PARAMS,
    KUBETRAIN_DEFAULTS,
    SGD_PARAMS,
    TORCH_ADAM_PARAMS,
    TORCH_OPTIMIZERS,
)
from kubetrain.api.deepspeed.values import fmt, is_number, suggest

# DeepSpeed optimizers people use that Kubetrain does not implement: what they are, what to use instead.
ALTERNATIVES = {
    "lamb": ("LAMB: Adam with a per-layer trust ratio", "use type AdamW (warm up longer if the batch is very "
             "large), or remove the optimizer section"),
    "onebitlamb": ("1-bit LAMB: LAMB with compressed communication", "use type AdamW; to compress gradient "
                   "communication use spec.parallelism.sync.mode powerSGD"),
    "onebitadam": ("1-bit Adam: Adam with 1-bit compressed communication", "use type Adam or AdamW; to compress "
                   "gradient communication use spec.parallelism.sync.mode powerSGD"),
    "zerooneadam": ("0/1 Adam: Adam with compressed, skipped communication", "use type Adam or AdamW; to "
                    "communicate less use spec.parallelism.sync.mode powerSGD or localSGD"),
}


def resolve_clipping(ctx: Context) -> float:
    ds = ctx.number(f"{DS}.gradient_clipping", ctx.ds.get("gradient_clipping"), ge=0.0)
    value = ctx.pick("spec.training.gradientClipping", ctx.spec.training.gradient_clipping,
                      f"{DS}.gradient_clipping", ds)
    return float(value) if value is not None else KUBETRAIN_DEFAULTS["gradientClipping"]

# -- optimizer -----------------------------------------------------------------------

def resolve_optimizer(ctx: Context) -> api.OptimizerSpec:
    o = ctx.spec.optimizer
    sec = ctx.section("optimizer")
    ds_type: str | None = None
    params: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    why = ""
    base = f"{DS}.optimizer"
    if sec is not None:
        raw_params = sec.get("params")
        if raw_params is not None and not isinstance(raw_params, Mapping):
            ctx.problem(f"{base}.params", f"must be an object (got {fmt(raw_params)})", "write params: {...}")
        elif raw_params is not None:
            params = dict(raw_params)
        ds_type, defaults, why = _ds_optimizer(ctx, sec.get("type"), params)
    p = f"{base}.params"
    opt_type = ctx.pick("spec.optimizer.type", o.type, f"{base}.type", ds_type, why=why,
                         shown=sec.get("type") if sec is not None else None)
    if opt_type is None:
        opt_type = KUBETRAIN_DEFAULTS["optimizer.type"]
    ds_lr = ctx.number(f"{p}.lr", params.get("lr"), gt=0.0)
    ds_eps = ctx.number(f"{p}.eps", params.get("eps"), gt=0.0)
    ds_wd = ctx.number(f"{p}.weight_decay", params.get("weight_decay"), ge=0.0)
    ds_mom = ctx.number(f"{p}.momentum", params.get("momentum"), ge=0.0, lt=1.0)
    ds_nesterov = ctx.boolean(f"{p}.nesterov", params.get("nesterov"))
    ds_betas = _betas(ctx, f"{p}.betas", params.get("betas"))

    def value(name: str, wire: str, typed: Any, ds_value: Any, fallback: Any) -> Any:
        got = ctx.pick(f"spec.optimizer.{wire}", typed, f"{p}.{name}", ds_value)
        if got is not None:
            return got
        # "auto" takes the typed field, i.e. Kubetrain's default here (not DeepSpeed's in-section one)
        in_section = sec is not None and not ctx.is_auto(f"optimizer.params.{name}")
        return defaults.get(name, fallback) if in_section else fallback

    d = KUBETRAIN_DEFAULTS
    sgd = opt_type == "SGD"
    lr = value("lr", "lr", o.lr, ds_lr, d["optimizer.lr"])
    betas = value("betas", "betas", o.betas, ds_betas, d["optimizer.betas"])
    eps = value("eps", "eps", o.eps, ds_eps, d["optimizer.eps"])
    wd = value("weight_decay", "weightDecay", o.weight_decay, ds_wd, 0.0 if sgd else d["optimizer.weightDecay"])
    momentum = value("momentum", "momentum", o.momentum, ds_mom, d["optimizer.momentum"])
    nesterov = value("nesterov", "nesterov", o.nesterov, ds_nesterov, d["optimizer.nesterov"])
    if sgd and nesterov and (momentum <= 0 or params.get("dampening", 0) != 0):
        ctx.problem(
            f"{p}.nesterov" if ds_nesterov else "spec.optimizer.nesterov",
            "Nesterov momentum needs momentum > 0 and dampening 0 (torch.optim.SGD rejects it otherwise)",
            "set momentum (e.g. 0.9) or nesterov: false",
        )
    return api.OptimizerSpec(
        type=opt_type, lr=float(lr), betas=[float(b) for b in betas], eps=float(eps),
        weight_decay=float(wd), momentum=float(momentum), nesterov=bool(nesterov),
    )

def _betas(ctx: Context, path: str, value: Any) -> list[float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(is_number(b) and 0.0 <= b < 1.0 for b in value)):
        ctx.problem(path, f"must be two numbers in [0, 1) (got {fmt(value)})", "write e.g. [0.9, 0.999]")
        return None
    return [float(b) for b in value]

def _ds_optimizer(ctx: Context, type_: Any, params: dict[str, Any]) -> tuple[str | None, dict[str, Any], str]:
    """DeepSpeed optimizer type -> (typed type, DeepSpeed's defaults, explanation)."""
    base = f"{DS}.optimizer"
    if type_ is None:
        ctx.problem(f"{base}.type", "is missing: DeepSpeed ignores an optimizer section without a type",
                     "add type: Adam (or AdamW, SGD), or remove the optimizer section")
        return None, {}, ""
    if not isinstance(type_, str):
        ctx.problem(f"{base}.type", f"must be a string (got {fmt(type_)})", "write type: Adam")
        return None, {}, ""
    name = type_.lower() if type_.lower() in DEEPSPEED_OPTIMIZERS else type_
    if name in ("adam", "adamw"):
        torch_adam = ctx.boolean(f"{base}.params.torch_adam", params.get("torch_adam", False)) or False
        w_mode = ctx.boolean(f"{base}.params.adam_w_mode", params.get("adam_w_mode", True))
        adamw = name == "adamw" or w_mode is not False
        if name == "adamw" and w_mode is False:
            ctx.notes.append(f"{base}.params.adam_w_mode=false has no effect: type {type_} is always AdamW "
                              f"(as in DeepSpeed)")
        impl = ("torch.optim.AdamW" if adamw else "torch.optim.Adam") if torch_adam else "FusedAdam"
        allowed = (TORCH_ADAM_PARAMS if torch_adam else FUSED_ADAM_PARAMS) | {"adam_w_mode", "torch_adam"}
        _check_params(ctx, params, allowed, f"{impl} (DeepSpeed optimizer type {type_})")
        if params.get("amsgrad") is True:
            ctx.problem(f"{base}.params.amsgrad", "AMSGrad is not supported (DeepSpeed's FusedAdam rejects it "
                         "too)", "remove amsgrad")
        # torch's AdamW defaults weight_decay to 0.01; FusedAdam and torch's Adam to 0.
        wd = 0.01 if (torch_adam and adamw) else 0.0
        defaults = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": wd}
        why = (" (DeepSpeed's Adam is AdamW unless params.adam_w_mode is false)" if name == "adam" and adamw
               else " (with params.adam_w_mode false DeepSpeed's Adam is torch's Adam)" if not adamw else "")
        return ("AdamW" if adamw else "Adam"), defaults, why
    if name == "SGD":
        _check_params(ctx, params, SGD_PARAMS, "torch.optim.SGD (DeepSpeed optimizer type SGD)")
        return "SGD", {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}, ""
    if name in ALTERNATIVES:
        what, alternative = ALTERNATIVES[name]
        ctx.problem(f"{base}.type", f"{type_} ({what}) is not supported by Kubetrain", alternative)
    elif name in DEEPSPEED_OPTIMIZERS:
        ctx.problem(f"{base}.type", f"DeepSpeed optimizer '{type_}' is not supported by Kubetrain",
                     "use Adam, AdamW or SGD")
    elif name in TORCH_OPTIMIZERS:
        ctx.problem(f"{base}.type", f"torch.optim.{type_} is accepted by DeepSpeed but not supported by "
                     "Kubetrain", "use Adam, AdamW or SGD")
    else:
        hint = suggest(type_, ["Adam", "AdamW", "SGD"])
        ctx.problem(f"{base}.type", f"unknown optimizer type '{type_}' (neither a DeepSpeed optimizer nor a "
                     "torch.optim class; torch names are case-sensitive)",
                     hint or "use Adam, AdamW or SGD")
    return None, {}, ""

def _check_params(ctx: Context, params: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    for name in params:
        path = f"{DS}.optimizer.params.{name}"
        if name == "max_grad_norm":
            ctx.problem(path, "is not an optimizer parameter (DeepSpeed rejects it)",
                         f"use {DS}.gradient_clipping")
        elif name not in allowed:
            hint = suggest(name, allowed)
            ctx.problem(path, f"'{name}' is not a parameter of {what}; DeepSpeed fails on it",
                         hint or f"remove it (parameters: {', '.join(sorted(allowed))})")
