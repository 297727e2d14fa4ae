"""Batch sizes: DeepSpeed's train = micro x accumulation x world size."""

from __future__ import annotations

import math

from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import DS, KUBETRAIN_DEFAULTS
from kubetrain.api.deepspeed.values import nominal_world_size


def resolve_batch(ctx: Context) -> tuple[int, int | None, int | None, str]:
    """(globalBatchSize, microBatchSize or None = G / world, accumulation, global's path)."""
    t = ctx.spec.training
    before = len(ctx.problems)
    ds_t = ctx.integer(f"{DS}.train_batch_size", ctx.ds.get("train_batch_size"), ge=1)
    ds_m = ctx.integer(f"{DS}.train_micro_batch_size_per_gpu", ctx.ds.get("train_micro_batch_size_per_gpu"),
                        ge=1)
    ds_a = ctx.integer(f"{DS}.gradient_accumulation_steps", ctx.ds.get("gradient_accumulation_steps"), ge=1)
    if len(ctx.problems) > before:  # a bad batch key: no rule to apply
        return (t.global_batch_size or KUBETRAIN_DEFAULTS["globalBatchSize"], t.micro_batch_size, None,
                "spec.training.globalBatchSize")

    def source(typed: int | None, typed_path: str, ds_value: int | None, ds_path: str) -> tuple[int | None, str]:
        value = ctx.pick(typed_path, typed, ds_path, ds_value)
        return value, (typed_path if typed is not None else ds_path)

    T, t_name = source(t.global_batch_size, "spec.training.globalBatchSize", ds_t, f"{DS}.train_batch_size")
    M, m_name = source(t.micro_batch_size, "spec.training.microBatchSize", ds_m,
                       f"{DS}.train_micro_batch_size_per_gpu")
    A, a_name = ds_a, f"{DS}.gradient_accumulation_steps"
    W = ctx.world
    where = f"world size {W}"
    if ctx.nominal:
        w = ctx.spec.workers
        where += f" ({w.replicas} worker{'s' if w.replicas != 1 else ''} x {w.procs} procsPerWorker)"

    def accumulation(total: int, micro: int) -> int:
        """Micro-steps per optimizer step at W: the largest rank share, ceil(total / W), in
        micro-batches of at most ``micro`` (uneven splits are exact: Kubetrain weights by samples)."""
        return math.ceil(math.ceil(total / W) / micro)

    def too_small(total: int, name: str) -> bool:
        if total >= W:
            return False
        ctx.problem(
            name,
            f"{name}={total} is smaller than the {where}: every process needs at least one sample per step",
            f"set {name} to at least {W}, or run fewer processes",
        )
        return True

    if T is not None and M is not None and A is not None:
        # DeepSpeed's own assertion on an explicit triple: it must hold at this world size or at
        # the job's nominal size (an elastic job validated there runs elsewhere, re-deriving A).
        if M * A * W != T and M * A * nominal_world_size(ctx.spec) != T:
            ctx.problem(
                t_name,
                f"{t_name}={T} must equal {m_name}={M} x {a_name}={A} x {where} = {M * A * W} "
                f"(DeepSpeed's train = micro x accumulation x world size)",
                f"set {t_name} to {M * A * W}, or leave one of the three out so that it is derived",
            )
            return T, M, A, t_name
        if too_small(T, t_name):
            return T, M, None, t_name
        return T, M, (A if M * A * W == T else accumulation(T, M)), t_name
    if T is not None and M is not None:
        if too_small(T, t_name):
            return T, M, None, t_name
        return T, M, accumulation(T, M), t_name
    if T is not None and A is not None:
        if too_small(T, t_name):
            return T, None, None, t_name
        micro = -(-T // (A * W))
        return T, micro, accumulation(T, micro), t_name
    if M is not None and A is not None:
        return M * A * W, M, A, m_name
    if T is not None or (M is None and A is None):
        if T is None:
            T, t_name = KUBETRAIN_DEFAULTS["globalBatchSize"], "spec.training.globalBatchSize"
        if too_small(T, t_name):
            return T, None, None, t_name
        return T, (-(-T // W) if not ctx.nominal else None), 1, t_name
    if M is not None:
        return M * W, M, 1, m_name
    ctx.problem(
        a_name,
        f"{a_name} alone does not give a batch size: DeepSpeed needs train_batch_size or "
        f"train_micro_batch_size_per_gpu",
        f"set {DS}.train_batch_size or {DS}.train_micro_batch_size_per_gpu "
        f"(or spec.training.globalBatchSize / microBatchSize)",
    )
    return KUBETRAIN_DEFAULTS["globalBatchSize"], None, None, "spec.training.globalBatchSize"
