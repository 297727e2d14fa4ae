"""`zero_optimization`: the stage as parallelism.strategy."""

from __future__ import annotations

from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import DS, KUBETRAIN_DEFAULTS, STRATEGY_OF_STAGE, ZERO_KEYS
from kubetrain.api.deepspeed.values import fmt, is_int


def resolve_strategy(ctx: Context) -> str:
    zo = ctx.ds.get("zero_optimization")
    stage: int | None = None
    path = f"{DS}.zero_optimization.stage"
    if isinstance(zo, bool):
        stage, path = (1 if zo else 0), f"{DS}.zero_optimization"
    elif zo is not None:
        sec = ctx.section("zero_optimization")
        if sec is not None:
            ctx.check_keys("zero_optimization", sec, ZERO_KEYS)
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
