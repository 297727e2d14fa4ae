"""Batch sizes: DeepSpeed's train = micro x accumulation x world size.

Two regimes:

- DeepSpeed's own arithmetic (`_set_batch_related_parameters` + `_batch_assertion` of DeepSpeed 0.19,
  with its floor divisions) whenever the DeepSpeed config writes a batch key and the world size is
  the job's nominal one: exactly DeepSpeed's verdict, e.g. train 32, micro 4 at world size 3 gives
  accumulation 32 // 4 // 3 = 2 and fails 4 x 2 x 3 != 32, as DeepSpeed does.
- Kubetrain's exact uneven split otherwise (typed fields only, or an elastic job running at another
  size than the nominal one): ranks take G // W or G // W + 1 samples, so any W <= G trains.

"auto" batch keys (the Hugging Face convention) take the typed fields: train_batch_size <-
training.globalBatchSize (which must then be set), train_micro_batch_size_per_gpu <-
training.microBatchSize (else Kubetrain's default, globalBatchSize / world size), and
gradient_accumulation_steps is derived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import DS, KUBETRAIN_DEFAULTS
from kubetrain.api.deepspeed.values import nominal_world_size

T_KEY, M_KEY, A_KEY = "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"
G_PATH, M_PATH = "spec.training.globalBatchSize", "spec.training.microBatchSize"


@dataclass
class Batch:
    global_batch: int
    micro: int | None  # None: G / world size (no accumulation), decided at the real world size
    accumulation: int | None  # at ctx.world; None when unknown


def resolve_batch(ctx: Context) -> Batch:
    t = ctx.spec.training
    before = len(ctx.problems)
    ds_t = ctx.integer(f"{DS}.{T_KEY}", ctx.ds.get(T_KEY), ge=1)
    ds_m = ctx.integer(f"{DS}.{M_KEY}", ctx.ds.get(M_KEY), ge=1)
    ds_a = ctx.integer(f"{DS}.{A_KEY}", ctx.ds.get(A_KEY), ge=1)
    if len(ctx.problems) > before:  # a bad batch key: no rule to apply
        return Batch(t.global_batch_size or KUBETRAIN_DEFAULTS["globalBatchSize"], t.micro_batch_size, None)
    if ctx.is_auto(T_KEY) and t.global_batch_size is None:
        ctx.problem(f"{DS}.{T_KEY}", f"is \"auto\", which takes {G_PATH}, and {G_PATH} is not set",
                    f"set {G_PATH} (the global batch per optimizer step)")
        return Batch(KUBETRAIN_DEFAULTS["globalBatchSize"], t.micro_batch_size, None)
    T = ctx.pick(G_PATH, t.global_batch_size, f"{DS}.{T_KEY}", ds_t)
    M = ctx.pick(M_PATH, t.micro_batch_size, f"{DS}.{M_KEY}", ds_m)
    if ctx.ds and T is None and M is None:
        path = f"{DS}.{A_KEY}" if ds_a is not None else f"{DS}.{T_KEY}"
        alone = f"{DS}.{A_KEY} alone does not give a batch size: " if ds_a is not None else ""
        ctx.problem(path, f"{alone}DeepSpeed needs train_batch_size or train_micro_batch_size_per_gpu and "
                    "neither is given (nor spec.training.globalBatchSize / microBatchSize)",
                    f"set {G_PATH} (or {DS}.{T_KEY})")
        return Batch(KUBETRAIN_DEFAULTS["globalBatchSize"], None, None)
    written = any(v is not None for v in (ds_t, ds_m, ds_a))
    if written and ctx.world == nominal_world_size(ctx.spec):
        return _deepspeed_arithmetic(ctx, T, M, ds_a)
    return _uneven(ctx, T, M, ds_a)


def _name(ctx: Context, typed_path: str, key: str, typed: int | None) -> str:
    return typed_path if typed is not None else f"{DS}.{key}"


def _where(ctx: Context) -> str:
    where = f"world size {ctx.world}"
    if ctx.nominal:
        w = ctx.spec.workers
        where += f" ({w.replicas} worker{'s' if w.replicas != 1 else ''} x {w.procs} procsPerWorker)"
    return where


def _deepspeed_arithmetic(ctx: Context, T: int | None, M: int | None, A: int | None) -> Batch:
    """DeepSpeed 0.19's derivation with its floor divisions, then its assertion."""
    W = ctx.world
    t_name = _name(ctx, G_PATH, T_KEY, ctx.spec.training.global_batch_size)
    m_name = _name(ctx, M_PATH, M_KEY, ctx.spec.training.micro_batch_size)
    a_name = f"{DS}.{A_KEY}"
    derived = ""
    if T is not None and M is not None and A is not None:
        pass
    elif T is not None and M is not None:
        A, derived = T // M // W, f"{a_name} = {t_name} // {m_name} // world size = {T} // {M} // {W}"
    elif T is not None and A is not None:
        M, derived = T // W // A, f"{m_name} = {t_name} // world size // {a_name} = {T} // {W} // {A}"
    elif M is not None and A is not None:
        T = M * A * W
    elif T is not None:
        A, M, derived = 1, T // W, f"{m_name} = {t_name} // world size = {T} // {W}"
    elif M is not None:
        T, A = M * W, 1
    else:
        ctx.problem(a_name, f"{a_name} alone does not give a batch size: DeepSpeed needs train_batch_size or "
                    "train_micro_batch_size_per_gpu", f"set {G_PATH} or {DS}.{T_KEY}")
        return Batch(KUBETRAIN_DEFAULTS["globalBatchSize"], None, None)
    assert T is not None and M is not None and A is not None
    for value, name in ((M, m_name), (A, a_name)):
        if value < 1:
            ctx.problem(name, f"computes to 0 at {_where(ctx)}: {derived} = 0, which DeepSpeed rejects",
                        f"raise {t_name} to at least {W * max(1, M if name == a_name else 1)}, or run fewer "
                        "processes")
            return Batch(T, None, None)
    if M * A * W == T and derived.startswith(f"{m_name} = {t_name} // world size ="):
        return Batch(T, None if ctx.nominal else M, A)  # train alone: micro stays "G / world size" for elastic runs
    if M * A * W != T:
        ctx.problem(t_name, f"{t_name}={T} must equal {m_name}={M} x {a_name}={A} x {_where(ctx)} = {M * A * W} "
                    "(DeepSpeed's train = micro x accumulation x world size"
                    + (f"; {derived}" if derived else "") + ")",
                    f"set {t_name} to a multiple of {M * W} such as {M * A * W}, or leave one of the three "
                    "out so that it is derived")
        return Batch(T, M, A)
    return Batch(T, M, A)


def _uneven(ctx: Context, T: int | None, M: int | None, A: int | None) -> Batch:
    """Kubetrain's rule: any world size up to the global batch, uneven splits weighted exactly."""
    W = ctx.world
    t_name = _name(ctx, G_PATH, T_KEY, ctx.spec.training.global_batch_size)

    def accumulation(total: int, micro: int) -> int:
        return math.ceil(math.ceil(total / W) / micro)

    def too_small(total: int, name: str) -> bool:
        if total >= W:
            return False
        ctx.problem(name, f"{name}={total} is smaller than the {_where(ctx)}: every process needs at least one "
                    "sample per step", f"set {name} to at least {W}, or run fewer processes")
        return True

    if T is not None and M is not None and A is not None and T not in (M * A * W, M * A * nominal_world_size(ctx.spec)):
        ctx.problem(t_name, f"{t_name}={T} must equal {DS}.{M_KEY}={M} x {DS}.{A_KEY}={A} x {_where(ctx)} = "
                    f"{M * A * W} (DeepSpeed's train = micro x accumulation x world size; it holds neither here "
                    "nor at the job's nominal size)", "leave one of the three out so that it is derived")
        return Batch(T, M, A)
    if T is None and M is not None:
        T = M * (A or 1) * W
        t_name = _name(ctx, M_PATH, M_KEY, ctx.spec.training.micro_batch_size)
    if T is None:
        T = KUBETRAIN_DEFAULTS["globalBatchSize"]
    if too_small(T, t_name):
        return Batch(T, M, None)
    if M is None and A is not None:
        M = -(-T // (A * W))
    if M is None:
        return Batch(T, -(-T // W) if not ctx.nominal else None, 1)
    return Batch(T, M, accumulation(T, M))
