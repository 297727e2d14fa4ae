"""Tensor and sequence parallelism on a 2-D ``(dp, tp)`` device mesh (torchtitan's design).

The mesh: ranks ``[d * tp, (d + 1) * tp)`` form tensor-parallel group ``d``; a pod's processes have
consecutive ranks and ``tp`` divides ``procsPerWorker``, so a TP group never leaves a pod. Data
parallelism (ddp / zero1 / zero2 / zero3) runs over the ``dp`` sub-mesh.

The built-in GPT's plan (``gpt_plan``), Megatron-style:

- ``tok_emb``: vocabulary-parallel (``RowwiseParallel`` on the embedding: rows of the table), its
  output all-reduced (``Replicate``) or, with sequence parallelism, reduce-scattered along the
  sequence (``Shard(1)``); ``pos_emb`` the same along positions, so both add up locally.
- attention: the fused qkv column-parallel (its rows are grouped by head, so a rank holds
  ``n_heads / tp`` heads), the output projection
  row-parallel; MLP: ``fc`` column-parallel, ``proj`` row-parallel. Each block input is all-gathered
  from the sequence shards first (sequence parallel) or is already replicated.
- norms (and the dropout after them): ``SequenceParallel`` (each rank normalises its sequence shard)
  or, without sequence parallelism, replicated DTensor parameters.
- ``head``: column-parallel over the vocabulary; its logits stay sharded (``Shard(-1)``) into a
  loss-parallel cross entropy (``loss_parallel``), so the full ``(B, T, V)`` logits never exist.

Custom models (``model.entrypoint``) bring their own plan: ``model.tensorParallelPlan``,
``"pkg.module:fn"`` with ``fn(model, tp_mesh, sequence_parallel) -> dict[str, ParallelStyle]`` (the
argument of ``parallelize_module``), applied the same way; their loss sees whatever their plan outputs.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from .errors import ModelError, SpecError
from .models import GPT, BuiltModel, LossFn, load_entrypoint

MESH_DIMS = ("dp", "tp")
PlanFn = Callable[..., Mapping[str, ParallelStyle]]


def make_mesh(device_type: str, world_size: int, local_world_size: int, tp: int) -> DeviceMesh:
    """The ``(dp, tp)`` mesh over all ranks: tp innermost, so TP groups are consecutive ranks, which
    torchrun gives the processes of one pod when tp divides the processes per pod."""
    if tp < 1 or local_world_size % tp or world_size % tp:
        raise SpecError(
            f"spec.parallelism.tensorParallel {tp} must divide the processes per worker ({local_world_size}) "
            "so that a tensor-parallel group stays inside one pod: set workers.procsPerWorker to a multiple of it"
        )
    return init_device_mesh(device_type, (world_size // tp, tp), mesh_dim_names=MESH_DIMS)


def _local_loss(fn: LossFn) -> LossFn:
    """The loss-parallel cross entropy returns a replicated DTensor; the engine accumulates plain
    tensors (``to_local`` keeps the autograd graph)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = fn(logits, targets)
        return out.to_local() if isinstance(out, DTensor) else out

    return loss


class ReplicateParallel(ParallelStyle):
    """Parameters as replicated DTensors on the tp mesh; inputs and outputs stay plain tensors.

    For modules outside the split (norms without sequence parallelism): every parameter of the model
    is then a DTensor on one mesh, which keeps gradient norms, FSDP's 2-D sharding and DCP uniform.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def to_dtensor(_mod: nn.Module, inputs: Any, mesh: DeviceMesh) -> Any:
            return tuple(
                DTensor.from_local(x, mesh, (Replicate(),), run_check=False) if isinstance(x, torch.Tensor) else x
                for x in inputs
            )

        def to_local(_mod: nn.Module, out: Any, _mesh: DeviceMesh) -> Any:
            return out.to_local() if isinstance(out, DTensor) else out

        return distribute_module(module, device_mesh, None, to_dtensor, to_local)


def gpt_plan(model: GPT, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """The plan for ``models.gpt.GPT`` (FQN -> style), as described in the module docstring."""
    seq = Shard(1) if sequence_parallel else Replicate()
    norm: ParallelStyle = SequenceParallel() if sequence_parallel else ReplicateParallel()
    plan: dict[str, ParallelStyle] = {
        "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        # positions: the (T, C) table's output sharded along T, to add to this rank's sequence shard
        "pos_emb": RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(0) if sequence_parallel else Replicate()
        ),
        "ln_f": norm,
        "head": ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1), use_local_output=False),
    }
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        gather = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
        plan |= {
            f"{b}.ln1": norm,
            f"{b}.attn": gather,
            f"{b}.attn.qkv": ColwiseParallel(),  # rows grouped by head: a row split is a head split
            f"{b}.attn.proj": RowwiseParallel(output_layouts=seq),
            f"{b}.ln2": norm,
            f"{b}.mlp": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            f"{b}.mlp.fc": ColwiseParallel(),
            f"{b}.mlp.proj": RowwiseParallel(output_layouts=seq),
        }
    return plan


def check_gpt(model: GPT, tp: int) -> None:
    cfg = model.cfg
    for what, n in (("model.nHeads", cfg.n_heads), ("model.vocabSize", cfg.vocab_size)):
        if n % tp:
            raise SpecError(
                f"spec.{what} {n} is not divisible by spec.parallelism.tensorParallel {tp}: "
                f"choose a tensorParallel that divides {n}"
            )


def load_plan_fn(ref: str) -> PlanFn:
    fn = load_entrypoint(ref)
    try:
        inspect.signature(fn).bind(None, None, True)
    except (TypeError, ValueError):
        raise ModelError(
            f"model.tensorParallelPlan {ref!r} must take (model, tp_mesh, sequence_parallel) and return "
            "the parallelize_module plan"
        ) from None
    return fn  # type: ignore[return-value]  # what it returns is checked where it is called


def apply_tp(built: BuiltModel, tp_mesh: DeviceMesh, sequence_parallel: bool, plan_ref: str | None) -> bool:
    """Split ``built.module`` over ``tp_mesh`` in place. Returns whether the loss is loss-parallel
    (the built-in GPT: logits sharded over the vocabulary)."""
    model = built.module
    tp = tp_mesh.size()
    if isinstance(model, GPT):
        check_gpt(model, tp)
        plan: Mapping[str, ParallelStyle] = gpt_plan(model, sequence_parallel)
        loss_par = True
    elif plan_ref:
        plan = load_plan_fn(plan_ref)(model, tp_mesh, sequence_parallel)
        if not isinstance(plan, Mapping):
            raise ModelError(f"model.tensorParallelPlan {plan_ref!r} returned {type(plan).__name__}, not a dict")
        loss_par = False
    else:
        raise SpecError(
            "spec.parallelism.tensorParallel > 1 with model.entrypoint needs model.tensorParallelPlan "
            "('pkg.module:fn' returning the parallelize_module plan)"
        )
    tied = isinstance(model, GPT) and model.head.weight is model.tok_emb.weight
    parallelize_module(model, tp_mesh, dict(plan))
    if tied:  # both sides are Shard(0) over the vocabulary: share the one DTensor again
        assert isinstance(model, GPT)
        model.head.weight = model.tok_emb.weight
    if loss_par:
        built.loss_fn = _local_loss(built.loss_fn)
    return loss_par


# ------------------------------------------------------------------------- training-time helpers


def dp_all_reduce_grads(grads: list[torch.Tensor], group: dist.ProcessGroup, dp_size: int) -> None:
    """DDP over the dp dimension for DTensor parameters (DDP itself takes only plain tensors): one
    flat, coalesced all-reduce of the local gradient shards, averaged."""
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    if not local or dp_size == 1:
        return
    for dtype in dict.fromkeys(t.dtype for t in local):
        same = [t for t in local if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in same])
        dist.all_reduce(flat, group=group)
        flat.div_(dp_size)
        offset = 0
        for t in same:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def _replication(g: torch.Tensor, world: int) -> int:
    """How many ranks hold each element of ``g``'s local shard (world / number of distinct shards)."""
    if not isinstance(g, DTensor):
        return world
    shards = 1
    for size, p in zip(g.device_mesh.shape, g.placements, strict=True):
        if not p.is_replicate():  # Shard, or FSDP's _StridedShard over dp (Partial was reduced above)
            shards *= size
    return world // shards


def tp_grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Global L2 norm of gradients that are DTensors on any sub-mesh (or plain replicated tensors):
    each rank sums the squares of its local shards divided by their replication, one all-reduce."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    total = torch.zeros((), device=device, dtype=torch.float32)
    for g in grads:
        if isinstance(g, DTensor) and any(p.is_partial() for p in g.placements):
            g = g.redistribute(placements=[Replicate() if p.is_partial() else p for p in g.placements])
        local = g.to_local() if isinstance(g, DTensor) else g
        total += local.float().pow(2).sum() / _replication(g, world)
    if world > 1:
        dist.all_reduce(total)
    return total.sqrt()


@contextlib.contextmanager
def loss_context(enabled: bool) -> Iterator[None]:
    """``loss_parallel`` around forward and backward when the logits are vocabulary-sharded."""
    if not enabled:
        yield
        return
    with loss_parallel():
        yield


def local_shard_fraction(model: nn.Module) -> dict[str, float]:
    """Parameter FQN -> local elements / global elements (tests, `kubetrain plan` cross-checks)."""
    out = {}
    for name, p in model.named_parameters():
        if isinstance(p, DTensor):
            out[name] = p.to_local().numel() / p.numel()
        else:
            out[name] = 1.0
    return out
