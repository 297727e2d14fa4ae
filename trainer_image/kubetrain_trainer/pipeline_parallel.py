"""Pipeline parallelism on a 3-D ``(pp, dp, tp)`` device mesh (torchtitan's design, on
``torch.distributed.pipelining``).

- The mesh: rank ``p * (dp * tp) + d * tp + t``; tp innermost (inside a pod), pp outermost, so a
  stage's ranks are consecutive and a pipeline may span pods.
- Stages: the built-in GPT is split into ``n`` stages (``pp``, or ``2 pp`` for the interleaved
  schedules: pp rank ``r`` holds stages ``r, r + pp``) at ``kubetrain.api.pipeline.gpt_split``'s
  block boundaries (``parallelism.pipelineBoundaries``, else balanced by parameter count),
  embeddings on the first, final norm and head on the last. A stage is a ``GPTStage`` that holds
  the GPT's own submodules under their own names (``blocks`` a ``ModuleDict`` keyed ``"3"``), so
  its state-dict keys are the unsplit model's: checkpoints reshard across pp like across dp and tp.
  A custom model brings ``model.pipelineSplit`` (``fn(model, stage_index, num_stages) -> module``).
- Tied embeddings: the first stage's token embedding and the last stage's head are one weight in
  the unsplit model; here each holds a copy, their gradients are summed between the two ranks
  after every step (Megatron's embedding group), so both copies stay equal.
- Schedules: ``ScheduleGPipe``, ``Schedule1F1B``, ``ScheduleInterleaved1F1B`` and
  ``ScheduleInterleavedZeroBubble`` (two stages per rank); the micro-batches are the step's
  gradient-accumulation micro-batches, the loss is computed on the last stage (times the fp16 loss
  scale, so every stage's gradients carry it) and reported to every rank by the engine's step
  all-reduce.
- Data parallelism inside each stage over the ``dp`` sub-mesh: zero2 / zero3 ``fully_shard`` per
  block and per stage (the stage drives FSDP's gradient reduction after the last micro-batch), ddp
  one flat all-reduce of the stage's gradients after the schedule; tensor parallelism first, per
  stage, with the GPT's plan (``tensor_parallel.gpt_plan``) restricted to the stage's modules.
- Gradient clipping uses the global norm over all stages: each rank sums the squares of its local
  shards divided by how many ranks of its stage hold them, one all-reduce over the world.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as ac_checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as pp_schedules
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import parallelize_module

from kubetrain.api.pipeline import gpt_split, n_stages, schedule_of

from .distributed import DistContext
from .errors import ModelError, SpecError
from .models import GPT, BuiltModel, load_entrypoint
from .parallel import FSDP_STRATEGIES, Parallelized, offload_policy
from .precision import PrecisionPlan
from .tensor_parallel import _local_loss, dp_all_reduce_grads, gpt_plan, load_plan_fn

MESH_DIMS = ("pp", "dp", "tp")
SplitFn = Callable[[nn.Module, int, int], nn.Module]


def make_mesh(device_type: str, world_size: int, local_world_size: int, pp: int, tp: int) -> DeviceMesh:
    """The ``(pp, dp, tp)`` mesh over all ranks."""
    if tp < 1 or local_world_size % tp:
        raise SpecError(
            f"spec.parallelism.tensorParallel {tp} must divide the processes per worker ({local_world_size}) "
            "so that a tensor-parallel group stays inside one pod: set workers.procsPerWorker to a multiple of it"
        )
    if world_size % (pp * tp):
        raise SpecError(
            f"spec.parallelism.pipelineParallel {pp} x tensorParallel {tp} must divide the world size "
            f"({world_size}): choose replicas or procsPerWorker so that every data-parallel replica gets whole "
            "pipelines"
        )
    return init_device_mesh(device_type, (pp, world_size // (pp * tp), tp), mesh_dim_names=MESH_DIMS)


# ------------------------------------------------------------------------------ stages


class GPTStage(nn.Module):
    """Stage ``blocks`` of a ``GPT`` (its own submodules, under its own names). ``first``: token and
    position embeddings before the blocks; ``last``: final norm and head after them. The last stage
    of a tied GPT also holds ``tok_emb`` (the head's weight is its weight), so its state-dict keys
    are the unsplit model's."""

    def __init__(self, model: GPT, blocks: range, *, first: bool, last: bool) -> None:
        super().__init__()
        self.seq_len = model.cfg.seq_len
        self.first, self.last = first, last
        tied = model.head.weight is model.tok_emb.weight
        if first or (last and tied):
            self.tok_emb = model.tok_emb
        if first:
            self.pos_emb = model.pos_emb
            self.drop = model.drop
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in blocks})
        if last:
            self.ln_f = model.ln_f
            self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            t = x.shape[1]
            if t > self.seq_len:
                raise ValueError(f"sequence length {t} exceeds model.seqLen {self.seq_len}")
            pos = torch.arange(t, device=x.device)
            x = self.drop(self.tok_emb(x) + self.pos_emb(pos))
        for block in self.blocks.values():
            x = block(x)
        if self.last:
            x = self.head(self.ln_f(x))
        return x


def _load_split_fn(ref: str) -> SplitFn:
    fn = load_entrypoint(ref)
    try:
        inspect.signature(fn).bind(None, 0, 2)
    except (TypeError, ValueError):
        raise ModelError(
            f"model.pipelineSplit {ref!r} must take (model, stage_index, num_stages) and return that stage's module"
        ) from None
    return fn  # type: ignore[return-value]


def split_model(built: BuiltModel, stage_ids: list[int], n: int, par_spec: Any, split_ref: str | None) -> list[nn.Module]:
    """This rank's stage modules (in ``stage_ids`` order)."""
    model = built.module
    if isinstance(model, GPT):
        from kubetrain.api.modelsize import GPTSize

        c = model.cfg
        size = GPTSize(c.n_layers, c.n_heads, c.d_model, c.vocab_size, c.seq_len, c.tie_embeddings)
        split = gpt_split(size, par_spec)
        if split.n != n or any(len(split.blocks(s)) == 0 for s in range(n)):
            raise SpecError(
                f"spec.parallelism.pipelineBoundaries: {n} stages need {n - 1} strictly increasing block indices "
                f"in 1..{c.n_layers - 1}"
            )
        return [GPTStage(model, split.blocks(s), first=s == 0, last=s == n - 1) for s in stage_ids]
    if not split_ref:
        raise SpecError(
            "spec.parallelism.pipelineParallel > 1 with model.entrypoint needs model.pipelineSplit "
            "('pkg.module:fn' returning a stage's module)"
        )
    fn = _load_split_fn(split_ref)
    out = []
    for s in stage_ids:
        try:
            stage = fn(model, s, n)
        except Exception as e:
            raise ModelError(f"model.pipelineSplit {split_ref!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(stage, nn.Module):
            raise ModelError(f"model.pipelineSplit {split_ref!r} returned {type(stage).__name__}, not an nn.Module")
        out.append(stage)
    return out


def _tp_stage(stage: nn.Module, full_plan: dict[str, Any], tp_mesh: DeviceMesh) -> None:
    names = {n for n, _ in stage.named_modules()}
    parallelize_module(stage, tp_mesh, {k: v for k, v in full_plan.items() if k in names})
    if isinstance(stage, GPTStage) and hasattr(stage, "tok_emb") and stage.last:
        stage.head.weight = stage.tok_emb.weight  # both Shard(0) over the vocabulary: one DTensor again


class MergedStages(nn.Module):
    """The parameters and buffers of several stage modules under their own FQNs, for a rank with
    more than one stage (interleaved schedules): what checkpoints, the optimizer's names and export
    read. Built after sharding (FSDP's sharded parameters are the objects the modules keep)."""

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        for stage in stages:
            for name, p in stage.named_parameters(remove_duplicate=False):
                self._owner(name).register_parameter(name.rsplit(".", 1)[-1], p)
            for name, b in stage.named_buffers(remove_duplicate=False):
                self._owner(name).register_buffer(name.rsplit(".", 1)[-1], b)

    def _owner(self, fqn: str) -> nn.Module:
        mod: nn.Module = self
        for part in fqn.split(".")[:-1]:
            child = mod._modules.get(part)
            if child is None:
                child = nn.Module()
                mod.add_module(part, child)
            mod = child
        return mod


# ------------------------------------------------------------------------------ gradients


def _stage_replication(g: torch.Tensor, stage_group: int) -> int:
    """How many ranks of this stage (dp x tp of them) hold each element of ``g``'s local shard."""
    if not isinstance(g, DTensor):
        return stage_group
    shards = 1
    for size, p in zip(g.device_mesh.shape, g.placements, strict=True):
        if not p.is_replicate():
            shards *= size
    return stage_group // shards


def pp_grad_norm(grads: list[tuple[torch.Tensor, float]], stage_group: int, device: torch.device) -> torch.Tensor:
    """Global L2 norm over every stage: (gradient, weight) pairs, weight 0 for a tied copy counted
    on another stage; one all-reduce over the world."""
    total = torch.zeros((), device=device, dtype=torch.float32)
    for g, weight in grads:
        if not weight:
            continue
        if isinstance(g, DTensor) and any(p.is_partial() for p in g.placements):
            g = g.redistribute(placements=[Replicate() if p.is_partial() else p for p in g.placements])
        local = g.to_local() if isinstance(g, DTensor) else g
        total += local.float().pow(2).sum() * weight / _stage_replication(g, stage_group)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return total.sqrt()


# ------------------------------------------------------------------------------ the runner


@dataclass
class PipelineParallelized(Parallelized):
    """``Parallelized`` for a pipeline: ``module`` the rank's stages (train/eval), ``inner`` the
    rank's parameters under the model's FQNs, ``tied`` this rank's copy of a tied embedding,
    ``tied_counted`` whether the norm counts it here (the first stage does)."""

    stages: list[nn.Module] = field(default_factory=list)
    mesh: DeviceMesh | None = None
    tied: torch.Tensor | None = None
    tied_counted: bool = True
    tied_group: dist.ProcessGroup | None = None

    def grad_norm(self) -> torch.Tensor:
        assert self.mesh is not None
        stage_group = self.mesh["dp"].size() * self.mesh["tp"].size()
        pairs = [(p.grad, 0.0 if (p is self.tied and not self.tied_counted) else 1.0)
                 for p in self.params if p.grad is not None]
        return pp_grad_norm(pairs, stage_group, self.params[0].device)

    def finish_grad_sync(self) -> None:
        """After the schedule: ddp over dp (FSDP reduced inside the stages), then the tied
        embedding's two halves summed between the first and the last stage."""
        assert self.mesh is not None
        dp = self.mesh["dp"]
        if not self.is_fsdp and dp.size() > 1:
            dp_all_reduce_grads(self.grads(), dp.get_group(), dp.size())
        if self.tied is not None and self.tied_group is not None and self.tied.grad is not None:
            g = self.tied.grad
            dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=self.tied_group)

    @contextlib.contextmanager
    def grad_sync(self, enabled: bool) -> Iterator[None]:
        del enabled
        yield


def _tied_groups(mesh: DeviceMesh) -> dict[tuple[int, int], dist.ProcessGroup]:
    """One process group per (dp, tp) coordinate: its first- and last-stage ranks (every rank
    creates every group, in the same order)."""
    ranks = mesh.mesh  # (pp, dp, tp) global ranks
    out = {}
    for d in range(ranks.shape[1]):
        for t in range(ranks.shape[2]):
            pair = [int(ranks[0, d, t]), int(ranks[-1, d, t])]
            group = dist.new_group(pair)
            if isinstance(group, dist.ProcessGroup):  # (a non-member gets a placeholder)
                out[(d, t)] = group
    return out


class Pipeline:
    """The stages of this rank, the schedule, and one step / evaluation over a list of micro-batches."""

    def __init__(
        self,
        built: BuiltModel,
        cfg: Any,  # kubetrain_trainer.config.JobConfig
        plan: PrecisionPlan,
        ctx: DistContext,
        mesh: DeviceMesh,
        *,
        n_microbatches: int,
    ) -> None:
        par_spec = cfg.parallel
        self.ctx, self.mesh, self.plan = ctx, mesh, plan
        self.pp, self.tp = mesh["pp"].size(), mesh["tp"].size()
        self.pp_rank = mesh["pp"].get_local_rank()
        self.schedule_spec = schedule_of(par_spec)
        self.n = n_stages(par_spec)
        self.stage_ids = [s for s in range(self.n) if s % self.pp == self.pp_rank]
        self.n_microbatches = n_microbatches
        self.scale = 1.0
        strategy = cfg.strategy
        if strategy == "zero1":
            raise SpecError("spec.parallelism.strategy zero1 with pipelineParallel > 1 is not supported: use zero2, "
                            "zero3 or ddp")
        model = built.module
        tied_model = isinstance(model, GPT) and model.head.weight is model.tok_emb.weight
        stages = split_model(built, self.stage_ids, self.n, par_spec, cfg.model.pipeline_split)
        del model
        built.module = stages[0]  # the unsplit model's other parts are freed with it
        loss_par = False
        if self.tp > 1:
            tp_mesh = mesh["tp"]
            if isinstance(built.module, GPTStage):
                from kubetrain.api.modelsize import model_shape

                shape = model_shape(cfg.model)
                for what, n in (("model.nHeads", shape.n_heads), ("model.vocabSize", shape.vocab_size)):
                    if n % self.tp:
                        raise SpecError(f"spec.{what} {n} is not divisible by spec.parallelism.tensorParallel "
                                        f"{self.tp}: choose a tensorParallel that divides {n}")
                full_plan = _gpt_plan_by_name(shape.n_layers, cfg.parallel.sequence_parallel_on)
                for stage in stages:
                    _tp_stage(stage, full_plan, tp_mesh)
                loss_par = True
                built.loss_fn = _local_loss(built.loss_fn)
            else:
                if not cfg.model.tensor_parallel_plan:
                    raise SpecError("spec.parallelism.tensorParallel > 1 with model.entrypoint needs "
                                    "model.tensorParallelPlan")
                plan_fn = load_plan_fn(cfg.model.tensor_parallel_plan)
                for stage in stages:
                    parallelize_module(stage, tp_mesh, dict(plan_fn(stage, tp_mesh, cfg.parallel.sequence_parallel_on)))
        t = cfg.training
        stage_blocks = [list(s.blocks.values()) if isinstance(s, GPTStage) else [] for s in stages]
        if t.activation_checkpointing:
            for blocks in stage_blocks:
                for block in blocks:
                    ac_checkpoint(block)
        if t.compile:
            import os

            from kubetrain.api.constants import ENV_COMPILE_BACKEND

            backend = os.environ.get(ENV_COMPILE_BACKEND, "inductor")
            for blocks in stage_blocks:
                for block in blocks:
                    block.compile(backend=backend)
        if strategy in FSDP_STRATEGIES:
            dp_mesh = mesh["dp"]
            reshard = strategy == "zero3"
            mp, off = plan.mp_policy(), offload_policy(cfg.parallel.offload, ctx)
            for stage, blocks in zip(stages, stage_blocks, strict=True):
                for block in blocks:
                    fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=off)
                fully_shard(stage, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=off)
        self.stages = stages
        inner: nn.Module = stages[0] if len(stages) == 1 else MergedStages(stages)
        params = list(dict.fromkeys(p for s in stages for p in s.parameters()))
        # tied embeddings: this rank's copy (first stage: the embedding; last stage: the head's)
        tied: torch.Tensor | None = None
        tied_counted = True
        groups = _tied_groups(mesh) if tied_model and self.pp > 1 else {}
        if tied_model:
            for s in stages:
                if isinstance(s, GPTStage) and hasattr(s, "tok_emb"):
                    tied = s.tok_emb.weight
                    tied_counted = s.first
        coord = (mesh["dp"].get_local_rank(), mesh["tp"].get_local_rank())
        self.par = PipelineParallelized(
            nn.ModuleList(stages), inner, strategy, params, mesh, loss_par,
            stages=stages, mesh=mesh, tied=tied, tied_counted=tied_counted,
            tied_group=groups.get(coord) if tied is not None else None,
        )
        self.loss_fn = built.loss_fn
        self.pp_stages = [
            PipelineStage(s, sid, self.n, ctx.device, group=mesh["pp"].get_group())
            for s, sid in zip(stages, self.stage_ids, strict=True)
        ]
        self.schedule = self._make_schedule()

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(out, target)
        return loss * self.scale if self.scale != 1.0 else loss

    def _make_schedule(self) -> Any:
        cls = getattr(pp_schedules, self.schedule_spec.torch_class)
        if self.schedule_spec.stages_per_rank == 1:
            return cls(self.pp_stages[0], self.n_microbatches, loss_fn=self._loss, scale_grads=True)
        return cls(self.pp_stages, self.n_microbatches, loss_fn=self._loss, scale_grads=True)

    @property
    def is_last(self) -> bool:
        return (self.n - 1) in self.stage_ids

    def forward_backward(self, batch: list[tuple[torch.Tensor, torch.Tensor]], scale: float) -> torch.Tensor:
        """One step's micro-batches through the pipeline: gradients left in the stages (summed over
        the micro-batches / their number, times ``scale``); returns this rank's share of the mean
        loss such that the sum over all ranks / world size is the global-batch mean."""
        if len(batch) != self.n_microbatches:
            raise RuntimeError(f"pipeline built for {self.n_microbatches} micro-batches, got {len(batch)}")
        self.scale = scale
        losses: list[torch.Tensor] = []
        with self.par.loss_context(), self.plan.autocast():
            self.schedule.step(arg_mbs=[(x,) for x, _ in batch], target_mbs=[y for _, y in batch], losses=losses,
                               return_outputs=False)
        self.par.finish_grad_sync()
        if not self.is_last:
            return torch.zeros((), device=self.ctx.device)
        total = torch.stack([v.detach().float() for v in losses]).sum()
        # only the last stage's dp x tp ranks hold a loss: x pp, so that the world mean is the mean
        return total / (len(losses) * scale) * self.pp

    @torch.no_grad()
    def eval_losses(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """Forward-only: the last stage's per-micro-batch losses ([] elsewhere)."""
        self.scale = 1.0
        losses: list[torch.Tensor] = []
        with self.par.loss_context(), self.plan.autocast():
            self.schedule.eval(arg_mbs=[(x,) for x, _ in batch], target_mbs=[y for _, y in batch], losses=losses)
        return [float(v) for v in losses]


def _gpt_plan_by_name(n_layers: int, sequence_parallel: bool) -> dict[str, Any]:
    """``tensor_parallel.gpt_plan`` for a GPT of ``n_layers`` blocks (the plan only reads the count)."""

    class _Shape:
        blocks = range(n_layers)

    return gpt_plan(_Shape(), sequence_parallel)  # type: ignore[arg-type]
