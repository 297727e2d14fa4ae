"""How data-parallel replicas stay in sync (``spec.parallelism.sync.mode``; strategy ddp for all but
allreduce).

- ``allreduce``: the wrapper (DDP / ZeroRedundancyOptimizer / FSDP2) averages gradients every step;
  this module only estimates the bytes that costs.
- ``localSGD``: no DDP wrapper, no gradient all-reduce. Each rank steps its own optimizer on the
  gradient of its own slice of the global batch; after every ``syncEvery``-th step the parameters
  are averaged (one all-reduce of the parameters). The optimizer state stays per rank.
- ``diloco`` (Douillard et al. 2023, arXiv:2311.08105): the same inner loop; every ``syncEvery``
  steps an outer step: pseudo-gradient ``Δ = θ_global - mean_r(θ_r)``, Nesterov SGD
  (``outerLr``, ``outerMomentum``) on ``θ_global`` (fp32, identical on every rank), then every rank
  restarts from ``θ_global``. outerLr 1 and momentum 0 is exactly localSGD.
- ``powerSGD``: DDP with torch's ``powerSGD_hook`` (Vogels et al. 2019): plain all-reduce for the
  first ``startStep`` steps, then each gradient matrix is all-reduced as a rank-``rank`` product
  ``P Qᵀ``; vectors (biases, norms) and matrices too small to gain x2 stay uncompressed. Lossy;
  error feedback (each rank adds back what compression dropped last step) and warm start are on.

Steps are iterations, as ``training.maxSteps`` counts them: the sync runs after step ``s`` when
``s % syncEvery == 0``, so a checkpoint at such a step holds identical replicas.

Engine hooks: ``replicate_only(mode)`` for ``parallelize``; ``make_syncer`` once the optimizer is
built; ``before_step()`` at the top of a step; ``after_step(step, skipped)`` after the optimizer
step, which returns the step's ``comm_bytes``: the bytes each rank hands to the collectives that
keep the replicas in sync (an all-reduce of N fp32 elements counts 4N; the loss/norm statistics
all-reduce of 8 bytes is left out).

Resume: ``state_dict()`` / ``load_state_dict()`` (see each class). Without a loaded state the first
``before_step`` starts every rank from rank 0's parameters (DDP does the same when it wraps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel as DDP

from kubetrain.api import DiLoCoSpec, LocalSGDSpec, PowerSGDSpec, SyncSpec

from .distributed import DistContext
from .parallel import Parallelized
from .precision import PrecisionPlan, Scaler

log = logging.getLogger("kubetrain_trainer")

LOCAL_MODES = ("localSGD", "diloco")  # modes without any gradient all-reduce
BUCKET_BYTES = 256 << 20  # parameter all-reduces go in flat buffers of at most this size


def replicate_only(mode: str) -> bool:
    """Whether ``parallelize`` must leave the DDP wrapper out (no gradient all-reduce at all)."""
    return mode in LOCAL_MODES


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` in groups of one dtype/device and at most BUCKET_BYTES (or one tensor)."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for idx in groups.values():
        bucket: list[int] = []
        size = 0
        for i in idx:
            n = tensors[i].numel() * tensors[i].element_size()
            if bucket and size + n > BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
            bucket.append(i)
            size += n
        if bucket:
            yield bucket


def _named_params(par: Parallelized) -> tuple[list[str], list[nn.Parameter]]:
    """Trainable parameters of the unwrapped model by FQN (tied weights once), in ``par.params`` order."""
    names = {p: n for n, p in par.inner.named_parameters()}
    params = [p for p in par.params if p.requires_grad]
    return [names[p] for p in params], params


class Syncer:
    """allreduce: the parallel wrapper synchronises every step; ``after_step`` reports its cost."""

    mode = "allreduce"

    def __init__(self, par: Parallelized, ctx: DistContext, step_bytes: int = 0) -> None:
        self.par, self.ctx = par, ctx
        self.step_bytes = step_bytes if ctx.world_size > 1 else 0

    def before_step(self) -> None:
        """Called at the top of every training step."""

    def after_step(self, step: int, skipped: bool) -> int:
        """Called after iteration ``step`` (1-based) finished its optimizer step (or skipped it).
        Returns the bytes this rank contributed to synchronising collectives during the step."""
        return self.step_bytes

    def replicas_identical(self, step: int) -> bool:
        """Whether every rank holds the same parameters after iteration ``step``."""
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """``None`` or another mode's state: nothing to restore (start this mode fresh)."""


def allreduce_step_bytes(par: Parallelized, plan: PrecisionPlan, accum_steps: int) -> int:
    """Estimated collective payload of one step in allreduce mode, from the parameter sizes Ψ:
    ddp Ψ·b (one gradient all-reduce); zero1 2Ψ·b (+ ZeroRedundancyOptimizer's parameter
    broadcast); zero2/zero3 per micro-batch a reduce-scatter of the gradients (fp32) and one (zero2)
    or two (zero3: forward and backward) all-gathers of the parameters in the compute dtype."""
    params = [p for p in par.params if p.requires_grad]
    full = _nbytes(params)
    if par.strategy == "ddp":
        return full
    if par.strategy == "zero1":
        return 2 * full
    numel = sum(p.numel() for p in params)
    param_bytes = torch.finfo(plan.compute_dtype).bits // 8 if plan.compute_dtype is not None else 4
    gathers = 2 if par.strategy == "zero3" else 1
    return accum_steps * numel * (4 + gathers * param_bytes)


class _Collective:
    """Flat, bucketed collectives over a list of tensors (AVG on NCCL, SUM / world on gloo)."""

    def __init__(self, ctx: DistContext) -> None:
        self.world = ctx.world_size
        self.avg = ctx.backend == "nccl"

    @torch.no_grad()
    def mean_(self, tensors: list[torch.Tensor]) -> int:
        """Replace each tensor by its mean over ranks; returns the bytes all-reduced."""
        if self.world == 1:
            return 0
        for idx in _buckets(tensors):
            bucket = [tensors[i] for i in idx]
            flat = _flatten_dense_tensors(bucket)
            if self.avg:
                dist.all_reduce(flat, op=dist.ReduceOp.AVG)
            else:
                dist.all_reduce(flat)
                flat.div_(self.world)
            for t, f in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                t.copy_(f)
        return _nbytes(tensors)

    @torch.no_grad()
    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        if self.world == 1:
            return
        for idx in _buckets(tensors):
            bucket = [tensors[i] for i in idx]
            flat = _flatten_dense_tensors(bucket)
            dist.broadcast(flat, src=0)
            for t, f in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                t.copy_(f)


class LocalSGD(Syncer):
    """Every rank trains its own replica; parameters are averaged after every ``every``-th step.

    State for resume: none beyond the model and the (per-rank) optimizer. A checkpoint taken at a
    step that is a multiple of ``syncEvery`` holds identical replicas; between syncs the replicas
    differ and a replicated save keeps one of them (rank 0's), which resumes a valid but different
    trajectory."""

    mode = "localSGD"

    def __init__(self, par: Parallelized, ctx: DistContext, every: int) -> None:
        super().__init__(par, ctx)
        if isinstance(par.module, DDP):
            raise RuntimeError(f"sync mode {self.mode} needs the model without the DDP wrapper")
        self.every = every
        self.names, self.params = _named_params(par)
        self.coll = _Collective(ctx)
        self.started = False  # set by the first before_step, or by load_state_dict

    def before_step(self) -> None:
        if not self.started:
            self.start()

    def start(self) -> None:
        """Start every rank from rank 0's parameters (no gradient all-reduce ever corrects a
        difference, e.g. from an entrypoint model that draws weights from another RNG)."""
        self.coll.broadcast_([p.detach() for p in self.params])
        self.started = True

    def after_step(self, step: int, skipped: bool) -> int:
        if step % self.every:
            return 0
        return self.sync()

    def sync(self) -> int:
        return self.coll.mean_([p.detach() for p in self.params])

    def replicas_identical(self, step: int) -> bool:
        return self.ctx.world_size == 1 or step % self.every == 0

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state and state.get("mode") == self.mode:
            self.started = True  # the restored parameters are the truth: no broadcast from rank 0


class DiLoCo(LocalSGD):
    """DiLoCo: localSGD's inner loop, and an outer Nesterov-SGD step on the averaged pseudo-gradient.

    Memory: θ_global and the outer momentum, 2 x 4 bytes per parameter on every rank, plus the
    pseudo-gradient (4 bytes per parameter) during an outer step.

    State for resume (``state_dict()``): ``global_params`` and ``outer_momentum`` (fp32 tensors by
    parameter FQN, identical on every rank: save them once, like replicated model weights) and
    ``outer_steps``. Without it (a weights-only init, or switching to diloco) θ_global starts from
    the parameters the first step sees."""

    mode = "diloco"

    def __init__(self, par: Parallelized, ctx: DistContext, every: int, outer_lr: float, outer_momentum: float) -> None:
        super().__init__(par, ctx, every)
        self.global_params = [p.detach().float().clone() for p in self.params]
        # torch's Nesterov needs momentum > 0; with momentum 0 both are plain SGD.
        self.outer = torch.optim.SGD(
            self.global_params, lr=outer_lr, momentum=outer_momentum, nesterov=outer_momentum > 0
        )
        self.outer_steps = 0

    @torch.no_grad()
    def start(self) -> None:
        super().start()
        for g, p in zip(self.global_params, self.params, strict=True):
            g.copy_(p.detach())

    @torch.no_grad()
    def sync(self) -> int:
        # mean_r(θ_r) in fp32 (its own buffers: the local parameters are overwritten below anyway).
        avg = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in self.params]
        nbytes = self.coll.mean_(avg)
        for g, a in zip(self.global_params, avg, strict=True):
            g.grad = g - a  # pseudo-gradient Δ = θ_global - mean(θ_local)
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        for p, g in zip(self.params, self.global_params, strict=True):
            p.detach().copy_(g)
        self.outer_steps += 1
        return nbytes

    def state_dict(self) -> dict[str, Any]:
        momentum = {}
        for name, g in zip(self.names, self.global_params, strict=True):
            buf = self.outer.state.get(g, {}).get("momentum_buffer")
            if buf is not None:
                momentum[name] = buf
        return {
            "mode": self.mode,
            "outer_steps": self.outer_steps,
            "global_params": dict(zip(self.names, self.global_params, strict=True)),
            "outer_momentum": momentum,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state or state.get("mode") != self.mode:
            log.info("no diloco state to restore: θ_global starts from the current parameters")
            return  # before_step will start from rank 0's (restored) parameters
        saved, momentum = state["global_params"], state.get("outer_momentum", {})
        missing = [n for n in self.names if n not in saved]
        if missing:
            raise ValueError(f"diloco state lacks global parameters {missing[:3]}")
        for name, g in zip(self.names, self.global_params, strict=True):
            g.copy_(saved[name])
            if name in momentum:
                self.outer.state[g]["momentum_buffer"] = momentum[name].to(g.device, torch.float32).clone()
        self.outer_steps = int(state.get("outer_steps", 0))
        super().load_state_dict(state)


class PowerSGD(Syncer):
    """DDP with torch's PowerSGD communication hook.

    ``comm_bytes`` is measured from the hook's own element counters (P and Q factors plus the
    uncompressed tensors) on compressed steps, the full gradient before ``startStep``.

    A skipped step (non-finite gradients, fp16 overflow) resets error feedback and the warm-start
    factors, which it would otherwise poison; under fp16 the error feedback is rescaled when the
    loss scale changes (it is kept in scaled-gradient units).

    State for resume (``state_dict()``, plain Python): ``iter`` (steps seen by the hook) and the
    hook's RNG. Error feedback (per rank) and the warm-start factors are not saved: they restart
    from zero, and the first two steps after a resume use plain all-reduce, since a fresh DDP
    rebuilds its buckets after its first iteration (torch's rule behind startStep >= 2)."""

    mode = "powerSGD"

    def __init__(self, par: Parallelized, ctx: DistContext, rank: int, start_step: int, scaler: Scaler) -> None:
        super().__init__(par, ctx)
        self.scaler = scaler
        self._scale = float(scaler.scale)
        params = [p for p in par.params if p.requires_grad]
        self.full_bytes = _nbytes(params)
        self.elem_bytes = params[0].element_size() if params else 4
        self.state: powersgd.PowerSGDState | None = None
        if isinstance(par.module, DDP):  # world size 1 has no DDP wrapper: nothing to compress
            self.state = powersgd.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=rank,
                start_powerSGD_iter=start_step,
                use_error_feedback=True,
                warm_start=True,
                # an all-zero gradient column (e.g. an unused entrypoint parameter) must not give NaN
                orthogonalization_epsilon=1e-8,
                random_seed=0,  # the same random projections on every rank
                compression_stats_logging_frequency=1 << 30,
            )
            par.module.register_comm_hook(self.state, powersgd.powerSGD_hook)
        self._seen_numel = 0
        self._seen_iter = 0

    def after_step(self, step: int, skipped: bool) -> int:
        st = self.state
        if st is None:
            return 0
        numel = st.total_numel_after_compression - self._seen_numel
        synced = st.iter != self._seen_iter
        self._seen_numel, self._seen_iter = st.total_numel_after_compression, st.iter
        if skipped:
            st.error_dict.clear()
            st.p_memory_dict.clear()
            st.q_memory_dict.clear()
        scale = float(self.scaler.scale)
        if scale != self._scale and st.error_dict:
            ratio = scale / self._scale
            for err in st.error_dict.values():
                err.mul_(ratio)
        self._scale = scale
        if numel:
            return numel * self.elem_bytes
        return self.full_bytes if synced else 0

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {"mode": self.mode}
        name, keys, pos, has_gauss, cached = self.state.rng.get_state()
        return {
            "mode": self.mode,
            "iter": int(self.state.iter),
            "rng": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        st = self.state
        if st is None or not state or state.get("mode") != self.mode or "iter" not in state:
            return
        import numpy as np

        name, keys, pos, has_gauss, cached = state["rng"]
        st.rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        # Two plain all-reduce iterations for the fresh DDP before compression resumes.
        st.iter = max(0, min(int(state["iter"]), st.start_powerSGD_iter - 2))
        self._seen_iter = st.iter


def make_syncer(sync: SyncSpec, par: Parallelized, ctx: DistContext, plan: PrecisionPlan, accum_steps: int) -> Syncer:
    """The syncer of ``spec.parallelism.sync``; absent settings objects take their models' defaults."""
    if sync.mode == "localSGD":
        return LocalSGD(par, ctx, (sync.local_sgd or LocalSGDSpec()).sync_every)
    if sync.mode == "diloco":
        d = sync.diloco or DiLoCoSpec()
        return DiLoCo(par, ctx, d.sync_every, d.outer_lr, d.outer_momentum)
    if sync.mode == "powerSGD":
        p = sync.power_sgd or PowerSGDSpec()
        return PowerSGD(par, ctx, p.rank, p.start_step, plan.scaler)
    return Syncer(par, ctx, allreduce_step_bytes(par, plan, accum_steps))
