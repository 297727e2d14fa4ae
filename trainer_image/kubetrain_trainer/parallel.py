"""Data parallelism on PyTorch's native stack.

- ``ddp``:   DistributedDataParallel (full replicas; gradients all-reduced, averaged).
- ``zero1``: DDP + ``ZeroRedundancyOptimizer`` (optimizer state sharded; see ``optim``).
- ``zero2``: FSDP2 ``fully_shard`` per block and the root, ``reshard_after_forward=False``
             (parameters stay gathered between forward and backward; gradients and optimizer
             state sharded).
- ``zero3``: the same with ``reshard_after_forward=True`` (parameters sharded too).

All four average gradients over ranks; the engine scales each micro-batch loss by
``1 / accum_steps`` so the result is the mean over the global batch.

With ``parallelism.tensorParallel`` > 1 (``tensor_parallel``) the model is first split over the tp
dimension of a ``(dp, tp)`` mesh and the strategy runs over ``dp``: zero2/zero3 shard with
``fully_shard(mesh=dp)`` (2-D DTensors), ddp all-reduces the local gradient shards over the dp group
itself (``finish_grad_sync``: DDP takes no DTensor parameters).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed._composable import checkpoint as ac_checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from kubetrain.api import OffloadSpec
from kubetrain.api.constants import ENV_COMPILE_BACKEND

from .distributed import DistContext
from .errors import SpecError
from .models import BuiltModel
from .precision import PrecisionPlan
from .tensor_parallel import apply_tp, dp_all_reduce_grads, loss_context, tp_grad_norm

FSDP_STRATEGIES = ("zero2", "zero3")


@dataclass
class Parallelized:
    module: nn.Module  # call this for forward
    inner: nn.Module  # the unwrapped model (state-dict FQNs as built)
    strategy: str
    params: list[nn.Parameter] = field(default_factory=list)
    tp_mesh: DeviceMesh | None = None  # the (dp, tp) mesh when tensorParallel > 1
    loss_parallel: bool = False  # logits sharded over the vocabulary: loss_parallel() around fwd + bwd

    @property
    def tensor_parallel(self) -> int:
        return self.tp_mesh["tp"].size() if self.tp_mesh is not None else 1

    def loss_context(self) -> contextlib.AbstractContextManager[None]:
        """Around forward and backward of every micro batch (and evaluation)."""
        return loss_context(self.loss_parallel)

    def finish_grad_sync(self) -> None:
        """After the last micro batch's backward: ddp over the dp sub-mesh with tensor parallelism."""
        if self.tp_mesh is not None and not self.is_fsdp:
            dp = self.tp_mesh["dp"]
            dp_all_reduce_grads(self.grads(), dp.get_group(), dp.size())

    @property
    def is_fsdp(self) -> bool:
        return self.strategy in FSDP_STRATEGIES

    @contextlib.contextmanager
    def grad_sync(self, enabled: bool) -> Iterator[None]:
        """DDP/zero1: skip the all-reduce on non-final micro-batches. FSDP reduce-scatters every
        micro-batch (ZeRO-2/3 style: only sharded gradients are ever accumulated)."""
        if enabled or not isinstance(self.module, DDP):
            yield
            return
        with self.module.no_sync():
            yield

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of all gradients (DTensor shards are combined with an all-reduce)."""
        grads = self.grads()
        if not grads:
            return torch.zeros((), device=self.params[0].device)
        if self.tp_mesh is not None:  # DTensors on the tp and (dp, tp) meshes, replicated ones counted once
            return tp_grad_norm(grads, grads[0].device)
        norm = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return norm

    @torch.no_grad()
    def poison_grads_(self) -> None:
        """Fault injection (tests): make this rank's first gradient +inf."""
        g = self.grads()[0]
        (g.to_local() if isinstance(g, DTensor) else g).fill_(float("inf"))

    @torch.no_grad()
    def scale_grads_(self, coef: torch.Tensor) -> None:
        local = [g.to_local() if isinstance(g, DTensor) else g for g in self.grads()]
        if local:
            torch._foreach_mul_(local, coef.to(local[0].device))


def check_combination(strategy: str, precision: str) -> None:
    """Combinations that cannot work whatever the hardware (spec-only ones live in config)."""
    if precision == "fp8" and strategy == "zero1":
        raise SpecError(
            "precision.dtype fp8 with parallelism.strategy zero1 is not supported "
            "(ZeroRedundancyOptimizer does not handle fp8 layers); use ddp, zero2 or zero3"
        )


def offload_policy(offload: OffloadSpec | None, ctx: DistContext) -> OffloadPolicy:
    """parallelism.offload (DeepSpeed offload_optimizer / offload_param device cpu) as FSDP2's policy: the
    parameter, gradient and optimizer-state shards live in host memory and the optimizer steps there.
    pin_memory only means something with a GPU to copy to."""
    if offload is None or offload.device != "cpu":
        return OffloadPolicy()
    pin = offload.pin_memory is not False and ctx.device.type == "cuda"
    return CPUOffloadPolicy(pin_memory=pin)


def parallelize(
    built: BuiltModel,
    strategy: str,
    plan: PrecisionPlan,
    ctx: DistContext,
    *,
    activation_checkpointing: bool = False,
    offload: OffloadSpec | None = None,
    compile: bool = False,
    replicate_only: bool = False,
    mesh: DeviceMesh | None = None,
    sequence_parallel: bool = True,
    tp_plan: str | None = None,
) -> Parallelized:
    """``replicate_only``: ddp without the DDP wrapper, for the sync modes that never all-reduce
    gradients (localSGD, diloco: ``sync.py`` averages the parameters itself). ``mesh``: the
    ``(dp, tp)`` mesh of tensor parallelism (``tensor_parallel.make_mesh``), None without it."""
    model = built.module
    loss_par = False
    if mesh is not None:
        if strategy == "zero1" or replicate_only:
            raise SpecError(
                "parallelism.tensorParallel > 1 works with strategy ddp, zero2 or zero3 and sync.mode allreduce "
                f"(got strategy {strategy}); see docs/parallelism.md"
            )
        loss_par = apply_tp(built, mesh["tp"], sequence_parallel, tp_plan)
    if activation_checkpointing:
        if not built.blocks:
            raise SpecError("training.activationCheckpointing needs a model with transformer blocks")
        for block in built.blocks:
            ac_checkpoint(block)
    if compile:
        # $KUBETRAIN_COMPILE_BACKEND (default inductor) lets CPU tests use aot_eager: same Dynamo
        # tracing through the FSDP/checkpoint hooks, without minutes of C++ codegen.
        backend = os.environ.get(ENV_COMPILE_BACKEND, "inductor")
        for block in built.blocks or [model]:
            block.compile(backend=backend)
    params = list(dict.fromkeys(model.parameters()))  # de-duplicated (tied embeddings)
    if strategy in FSDP_STRATEGIES:
        reshard = strategy == "zero3"
        mp = plan.mp_policy()
        off = offload_policy(offload, ctx)
        dp_mesh = mesh["dp"] if mesh is not None else None
        for block in built.blocks:
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=off)
        fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=off)
        assert isinstance(model, FSDPModule)
        return Parallelized(model, model, strategy, list(dict.fromkeys(model.parameters())), mesh, loss_par)
    if mesh is not None:  # ddp over dp: finish_grad_sync all-reduces the local shards
        return Parallelized(model, model, strategy, params, mesh, loss_par)
    if strategy in ("ddp", "zero1"):
        if ctx.world_size == 1 or replicate_only:  # no gradient all-reduce: skip DDP's hooks entirely
            return Parallelized(model, model, strategy, params)
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp = DDP(model, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True)
        return Parallelized(ddp, model, strategy, params)
    raise SpecError(f"unknown parallelism.strategy {strategy!r}")
