"""Plan a TrainingJob before running it: parameters, per-rank memory of each strategy, FLOPs,
step time at an assumed MFU, and whether (and how) it fits the GPU. Pure Python, no torch.

Memory per rank, Ψ parameters, N ranks (docs/plan.md derives every constant):

* The ZeRO paper (Rajbhandari et al., SC'20, section 3 and figure 1), mixed precision with Adam,
  K = 12 bytes of optimizer state per parameter (fp32 master copy, momentum, variance):
  ddp (2+2+K)Ψ; zero1 2Ψ+2Ψ+KΨ/N; zero2 2Ψ+(2+K)Ψ/N; zero3 (2+2+K)Ψ/N.
* What *our* trainer keeps, used for the fit check: parameters are fp32 master weights and
  gradients are fp32 (DDP buckets, FSDP's fp32 reduce dtype), so model states are 4Ψ + 4Ψ + 8Ψ
  (AdamW's fp32 exp_avg and exp_avg_sq), sharded as the strategy says, plus a bf16 working set:
  autocast's bf16 weight copies (ddp, zero1), FSDP's gathered bf16 parameters (all of them for
  zero2, which does not reshard after forward; root + prefetched blocks for zero3) and one
  block's unsharded gradients in flight.
* Activations of one micro batch at the start of backward, derived for the built-in GPT and
  checked against torch's MemTracker: see `activation_bytes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kubetrain import api
from kubetrain.api.modelsize import (
    CPU_NAMES,
    DEFAULT_PRESET,
    GPU_PEAK_TFLOPS,
    PRESETS,
    GPTSize,
    ParamBreakdown,
    flops_per_token,
    gpt_flops_per_token,
    gpt_param_breakdown,
    gpt_size,
    gpu_label,
    gpu_memory_bytes,
    peak_flops,
)
from kubetrain.tools import plan_pp, plan_tp

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")  # least communication and overhead first
MIXED_DTYPES = frozenset({"bf16", "fp16", "fp8"})
DEFAULT_MFU = 0.4
DEFAULT_HEADROOM = 0.10  # CUDA context, NCCL buffers and allocator fragmentation
DEFAULT_GPU = "H100"
FSDP_PREFETCH_BLOCKS = 2  # zero3: the block computing plus the one FSDP2 prefetches
GIB = 2**30

# Paper (ZeRO, section 3.1): bytes per parameter of (params, grads) and K (optimizer states).
PAPER_MIXED = (2, 2, 12)
PAPER_FP32 = (4, 4, 8)  # the same accounting without a low-precision copy: no master weights in K

# Ours: fp32 master weights and fp32 gradients whatever the compute dtype (precision.py).
MASTER_BYTES = 4
GRAD_BYTES = 4


class PlanError(ValueError):
    """The spec cannot be planned as given (e.g. the DeepSpeed mapping fails at this world size)."""


# ------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class Activations:
    """Activation bytes per rank for one micro batch, at the peak (the start of backward)."""

    micro_batch: int
    without_checkpointing_bytes: int
    with_checkpointing_bytes: int

    def at(self, checkpointing: bool) -> int:
        return self.with_checkpointing_bytes if checkpointing else self.without_checkpointing_bytes


@dataclass(frozen=True)
class StrategyMemory:
    """Peak bytes per rank of one strategy at the job's micro batch."""

    strategy: str
    params_bytes: int  # fp32 master weights held by this rank
    grads_bytes: int  # fp32 gradients held by this rank
    optimizer_bytes: int  # optimizer states held by this rank
    working_bytes: int  # bf16 copies / gathered parameters / gradients in flight
    activations_bytes: int | None  # None: unknown (entrypoint model)
    total_bytes: int
    paper_bytes: int  # the ZeRO paper's model-state formula, for comparison
    fits: bool | None  # None: no GPU to fit (CPU job)


@dataclass(frozen=True)
class Plan:
    name: str
    model: str
    n_params: int | None
    params_source: str  # "built-in GPT" | "--params" | "unknown"
    gpt: GPTSize | None
    flops_per_token: float | None
    world_size: int
    gpu: str | None  # the GPU table's name; None on CPU
    gpu_memory_bytes: int | None
    usable_bytes: int | None
    peak_flops: float | None  # per GPU, for the dtype
    dtype: str
    strategy: str
    optimizer: str
    global_batch: int
    micro_batch: int
    accum_steps: int | None  # None: the global batch is smaller than the world size
    seq_len: int
    activation_checkpointing: bool
    activations: Activations | None
    memory: tuple[StrategyMemory, ...]
    flops_per_step: float | None
    mfu: float
    step_time_s: float | None
    tokens_per_s: float | None
    run_time_s: float | None
    max_steps: int
    fits: bool | None
    suggestion: str
    notes: tuple[str, ...]
    # tensor parallelism (plan_tp): world = data_parallel x tensor_parallel; memory is per rank of that mesh
    tensor_parallel: int = 1
    sequence_parallel: bool = False
    data_parallel: int = 0
    tp_collectives: plan_tp.TPCollectives | None = None
    host_bytes_per_node: int | None = None  # parallelism.offload cpu: host memory per node for the model states
    # pipeline parallelism (plan_pp): world = pp x dp x tp; the memory rows are the busiest pp rank's
    pipeline_parallel: int = 1
    pipeline: plan_pp.PipelinePlan | None = None

    def memory_of(self, strategy: str) -> StrategyMemory | None:
        return next((m for m in self.memory if m.strategy == strategy), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------- model states


def zero_paper_bytes(strategy: str, n_params: int, world_size: int, *, param_bytes: int = 2,
                     grad_bytes: int = 2, k: int = 12) -> int:
    """Model states per rank by the ZeRO paper's formulas (Ψ = n_params, N = world_size)."""
    psi, n = n_params, world_size
    per_strategy = {
        "ddp": (param_bytes + grad_bytes + k) * psi,
        "zero1": (param_bytes + grad_bytes) * psi + k * psi / n,
        "zero2": param_bytes * psi + (grad_bytes + k) * psi / n,
        "zero3": (param_bytes + grad_bytes + k) * psi / n,
    }
    return round(per_strategy[strategy])


def optimizer_state_bytes(optimizer: str, momentum: float) -> int:
    """Bytes of optimizer state per parameter in our trainer (fp32, torch.optim)."""
    if optimizer in ("Adam", "AdamW"):
        return 8  # exp_avg + exp_avg_sq
    return 4 if momentum > 0 else 0  # SGD: a momentum buffer only when momentum is used


def paper_bytes(strategy: str, n_params: int, world_size: int, dtype: str, opt_bytes: int) -> int:
    """The paper's formula for this precision: K = master copy + states in mixed precision."""
    p, g, _ = PAPER_MIXED if dtype in MIXED_DTYPES else PAPER_FP32
    k = opt_bytes + (MASTER_BYTES if dtype in MIXED_DTYPES else 0)
    return zero_paper_bytes(strategy, n_params, world_size, param_bytes=p, grad_bytes=g, k=k)


def working_bytes(strategy: str, n_params: int, dtype: str, parts: ParamBreakdown | None) -> int:
    """The unsharded working set beyond the master states, at the start of backward.

    ddp/zero1 run under autocast, which keeps a bf16 copy of every matmul weight until that
    weight's backward. zero2/zero3 run FSDP2 with param_dtype = compute dtype: zero2 keeps every
    gathered parameter from forward to backward; zero3 keeps the root unit (embeddings, final
    norm, head; FSDP2 never reshards the root after forward) and the blocks being computed and
    prefetched. Both also hold one block's unsharded gradient and its fp32 copy for the
    reduce-scatter."""
    compute = 2 if dtype in MIXED_DTYPES else 4
    if strategy in ("ddp", "zero1"):
        if dtype not in MIXED_DTYPES:
            return 0
        return 2 * (parts.flops_params if parts else n_params)
    block = parts.per_layer if parts else 0
    # A block's gradient in the compute dtype, and (mixed precision) its fp32 copy for reduce_dtype.
    grads_in_flight = (compute + GRAD_BYTES if dtype in MIXED_DTYPES else GRAD_BYTES) * block
    if strategy == "zero2":
        return compute * n_params + grads_in_flight
    root = parts.root if parts else 0
    return compute * (root + FSDP_PREFETCH_BLOCKS * block) + grads_in_flight


def strategy_memory(strategy: str, *, n_params: int, world_size: int, dtype: str, opt_bytes: int,
                    parts: ParamBreakdown | None, activations: int | None, usable: int | None) -> StrategyMemory:
    n = world_size
    shard_params = strategy in ("zero2", "zero3")  # FSDP2 shards the fp32 parameters themselves
    shard_grads = strategy in ("zero2", "zero3")
    params = MASTER_BYTES * n_params / (n if shard_params else 1)
    grads = GRAD_BYTES * n_params / (n if shard_grads else 1)
    optim = opt_bytes * n_params / (1 if strategy == "ddp" else n)
    work = working_bytes(strategy, n_params, dtype, parts)
    total = round(params + grads + optim + work + (activations or 0))
    return StrategyMemory(
        strategy=strategy,
        params_bytes=round(params),
        grads_bytes=round(grads),
        optimizer_bytes=round(optim),
        working_bytes=work,
        activations_bytes=activations,
        total_bytes=total,
        paper_bytes=paper_bytes(strategy, n_params, world_size, dtype, opt_bytes),
        fits=None if usable is None else total <= usable,
    )


# --------------------------------------------------------------------------- activations


def _activation_constants(dtype: str, strategy: str) -> tuple[int, int, int, int]:
    """Bytes per token per d_model of the built-in GPT: (per layer, checkpointed block input,
    after the blocks, backward temporaries of one recomputed block).

    Per layer with a compute dtype of c bytes and flash/memory-efficient attention (no s x s
    matrix) and no dropout, saved for backward: LayerNorm inputs 2 x r (r = residual stream bytes),
    qkv input c, qkv output 3c (SDPA saves q, k, v as views of it), attention output c (SDPA's
    output, also the projection's input), MLP input c, GELU input 4c, MLP projection input 4c:
    2r + 14c. autocast (ddp/zero1) keeps the residual stream fp32: r = 4, c = 2 -> 36. FSDP2's
    param_dtype (zero2/zero3) makes the whole forward bf16: r = c = 2 -> 32. fp32: 64.
    After the blocks: the final LayerNorm's input (r) and the head's input (c)."""
    if dtype not in MIXED_DTYPES:
        return 64, 4, 8, 16
    if strategy in ("zero2", "zero3"):
        return 32, 2, 4, 8
    return 36, 4, 6, 8


LOSS_BYTES_PER_LOGIT = 12  # fp32 log-softmax output + its incoming and outgoing gradients


def activation_bytes(size: GPTSize, micro_batch: int, dtype: str, strategy: str, *,
                     checkpointing: bool, dropout: float = 0.0) -> int:
    """Peak activation bytes of one micro batch of the built-in GPT (s = seqLen, b = micro batch,
    h = dModel, V = vocab, L = layers):

    without checkpointing: L·layer·sbh + final·sbh + 12·sbV
    with checkpointing:    L·input·sbh + final·sbh + max(12·sbV, (layer + tmp)·sbh)

    Korthikanti et al. (2022) give sbh(34 + 5as/h) per layer for 16-bit Megatron layers; the
    5as/h attention-matrix term is gone with flash attention, and the constants here are for
    this module (see `_activation_constants`). The loss term is cross-entropy on fp32 logits,
    which dominates at large vocabularies; with checkpointing either it or the recomputation of
    one block sets the peak."""
    layer, block_input, final, tmp = _activation_constants(dtype, strategy)
    if dropout > 0:
        layer += 2  # the two residual dropouts' bool masks (attention dropout keeps no mask)
    sbh = micro_batch * size.seq_len * size.d_model
    loss = LOSS_BYTES_PER_LOGIT * micro_batch * size.seq_len * size.vocab_size
    if not checkpointing:
        return size.n_layers * layer * sbh + final * sbh + loss
    return size.n_layers * block_input * sbh + final * sbh + max(loss, (layer + tmp) * sbh)


def activations_for(size: GPTSize | None, micro_batch: int, dtype: str, strategy: str,
                    dropout: float) -> Activations | None:
    if size is None:
        return None
    return Activations(
        micro_batch=micro_batch,
        without_checkpointing_bytes=activation_bytes(size, micro_batch, dtype, strategy,
                                                     checkpointing=False, dropout=dropout),
        with_checkpointing_bytes=activation_bytes(size, micro_batch, dtype, strategy,
                                                  checkpointing=True, dropout=dropout),
    )


# --------------------------------------------------------------------------- the spec


def resolve_spec(spec: api.TrainingJobSpec, world_size: int) -> api.TrainingJobSpec:
    """spec.deepspeed mapped onto the typed fields at this world size (kubetrain.api.deepspeed).
    Without a DeepSpeed config the typed fields are read as they are (defaults applied by `plan`),
    so an uneven batch becomes a note instead of an error."""
    if not spec.deepspeed:
        return spec
    try:
        from kubetrain.api import deepspeed
    except ImportError:  # the mapping module is optional for planning: typed fields + defaults
        return spec
    try:
        return deepspeed.resolve(spec, world_size=world_size)
    except ValueError as exc:
        raise PlanError(f"at world size {world_size}: {exc}") from None


def model_size(model: api.ModelSpec) -> GPTSize | None:
    """The built-in GPT's sizes exactly as the trainer resolves them; None for an entrypoint."""
    if model.entrypoint:
        return None
    return gpt_size(model.preset, tie_embeddings=model.tie_embeddings, n_layers=model.n_layers,
                    n_heads=model.n_heads, d_model=model.d_model, vocab_size=model.vocab_size,
                    seq_len=model.seq_len)


def describe_model(model: api.ModelSpec, size: GPTSize | None) -> str:
    if size is None:
        return f"entrypoint {model.entrypoint}"
    preset = model.preset or DEFAULT_PRESET
    custom = dict(PRESETS[preset]) != {k: getattr(size, k) for k in PRESETS[preset]}
    label = f"GPT {preset}" + (" (custom sizes)" if custom else "")
    tie = "tied" if size.tie_embeddings else "untied"
    return (f"{label}: {size.n_layers} layers, dModel {size.d_model}, {size.n_heads} heads, "
            f"vocab {size.vocab_size}, seqLen {size.seq_len}, {tie} embeddings")


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class _Inputs:
    """Everything the memory of one (strategy, micro batch, checkpointing) depends on."""

    size: GPTSize | None
    n_params: int
    world_size: int
    dtype: str
    opt_bytes: int
    dropout: float
    usable: int | None
    tp: int = 1  # world_size above is then the data-parallel size, n_params the whole model's
    sp: bool = False

    def memory(self, strategy: str, micro: int, checkpointing: bool) -> StrategyMemory:
        if self.tp > 1:
            return self._memory_tp(strategy, micro, checkpointing)
        parts = gpt_param_breakdown(self.size) if self.size else None
        act = activations_for(self.size, micro, self.dtype, strategy, self.dropout)
        return strategy_memory(
            strategy, n_params=self.n_params, world_size=self.world_size, dtype=self.dtype,
            opt_bytes=self.opt_bytes, parts=parts, activations=act.at(checkpointing) if act else None,
            usable=self.usable,
        )

    def _memory_tp(self, strategy: str, micro: int, checkpointing: bool) -> StrategyMemory:
        """One rank of the (dp, tp) mesh: its tp slice of the model, sharded or replicated over dp."""
        parts = plan_tp.split_breakdown(self.size, self.tp) if self.size else None
        act = plan_tp.activation_bytes(
            self.size, micro, self.dtype, strategy, checkpointing=checkpointing, dropout=self.dropout,
            tp=self.tp, sequence_parallel=self.sp,
        ) if self.size else None
        return strategy_memory(
            strategy, n_params=parts.total if parts else -(-self.n_params // self.tp), world_size=self.world_size,
            dtype=self.dtype, opt_bytes=self.opt_bytes, parts=parts, activations=act, usable=self.usable,
        )

    def with_tp(self, tp: int) -> _Inputs:
        return dataclasses.replace(self, tp=tp, world_size=self.world_size * self.tp // tp, sp=tp > 1)


def micro_batch_options(global_batch: int, world_size: int) -> list[int]:
    """Micro batches the trainer accepts: divisors of the per-rank batch, largest first."""
    if global_batch % world_size:
        return []
    per_rank = global_batch // world_size
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0]


def largest_fitting_micro(inputs: _Inputs, strategy: str, options: list[int], checkpointing: bool) -> int | None:
    return next((m for m in options if inputs.memory(strategy, m, checkpointing).fits), None)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def suggest(inputs: _Inputs, strategy: str, micro: int, checkpointing: bool, options: list[int]) -> str:
    """The cheapest strategy that fits and the largest micro batch that fits, in one sentence."""
    assert inputs.usable is not None
    usable = _gib(inputs.usable)
    current = inputs.memory(strategy, micro, checkpointing)
    if current.fits:
        text = f"{strategy} with microBatchSize {micro} fits: {_gib(current.total_bytes)} of {usable} usable"
        cheaper = [s for s in STRATEGIES[: STRATEGIES.index(strategy)] if inputs.memory(s, micro, checkpointing).fits]
        if cheaper:
            text += f"; {cheaper[0]} also fits ({_gib(inputs.memory(cheaper[0], micro, checkpointing).total_bytes)}) and communicates less"
        bigger = largest_fitting_micro(inputs, strategy, [m for m in options if m > micro], checkpointing)
        if bigger:
            text += f"; microBatchSize up to {bigger} fits with {strategy} (fewer accumulation steps)"
        without = inputs.memory(strategy, micro, False) if checkpointing else None
        if without is not None and without.fits:
            text += (f"; it also fits without activation checkpointing ({_gib(without.total_bytes)}), "
                     "which saves the recomputation")
        return text
    needs = f"{strategy} needs {_gib(current.total_bytes)} per GPU > {usable} usable"
    for ac in dict.fromkeys((checkpointing, True)):
        same_micro = next((s for s in STRATEGIES if inputs.memory(s, micro, ac).fits), None)
        if same_micro:
            return f"{same_micro} with microBatchSize {micro}{_ac_words(ac, checkpointing)} fits " \
                   f"({_gib(inputs.memory(same_micro, micro, ac).total_bytes)}); {needs}"
        best = max(((largest_fitting_micro(inputs, s, options, ac) or 0, -i, s) for i, s in enumerate(STRATEGIES)))
        if best[0]:
            m, s = best[0], best[2]
            return f"{s} with microBatchSize {m}{_ac_words(ac, checkpointing)} fits " \
                   f"({_gib(inputs.memory(s, m, ac).total_bytes)}); {needs}"
    smallest = inputs.memory("zero3", options[-1] if options else 1, True)
    return (f"does not fit: even zero3 with microBatchSize {options[-1] if options else 1} and activation "
            f"checkpointing needs {_gib(smallest.total_bytes)} > {usable}; use more GPUs, a larger GPU "
            "or a smaller model / seqLen")


def _ac_words(ac: bool, configured: bool) -> str:
    return " and activationCheckpointing: true" if ac and not configured else ""


# --------------------------------------------------------------------------- the plan


def plan(spec: api.TrainingJobSpec, gpu: str | None = None, world_size: int | None = None, *,
         params: int | None = None, mfu: float = DEFAULT_MFU, headroom: float = DEFAULT_HEADROOM,
         name: str = "") -> Plan:
    """Plan `spec` on `world_size` ranks (default replicas x procsPerWorker) of `gpu` (a name such
    as "H100" or torch's "NVIDIA H100 80GB HBM3"; "cpu" for none; default H100 when the job asks
    for GPUs). `params` overrides the parameter count (required to size an entrypoint model).
    Raises PlanError for an unknown GPU or a spec the DeepSpeed mapping rejects."""
    world = world_size or spec.workers.replicas * spec.workers.procs
    tp, pp = spec.parallelism.tensor_parallel, spec.parallelism.pipeline_parallel
    if world % (tp * pp):
        raise PlanError(f"pipelineParallel {pp} x tensorParallel {tp} does not divide the world size {world}")
    dp = world // (tp * pp)  # DeepSpeed's batch rule and the global-batch split count data-parallel ranks
    spec = resolve_spec(spec, dp)
    gpu_name = gpu if gpu is not None else (DEFAULT_GPU if spec.workers.gpus_per_worker > 0 else "cpu")
    label, mem = _resolve_gpu(gpu_name)
    on_gpu = label is not None

    t = spec.training
    notes: list[str] = []
    dtype = spec.precision.dtype or "fp32"
    strategy = spec.parallelism.strategy or "ddp"
    optimizer = spec.optimizer.type or "AdamW"
    opt_bytes = optimizer_state_bytes(optimizer, spec.optimizer.momentum or 0.0)
    global_batch = t.global_batch_size or 8
    # a pipeline without a micro-batch size: one micro-batch per stage (kubetrain.api.pipeline)
    micro = t.micro_batch_size or max(1, math.ceil(global_batch / dp) // pp)
    accum = _accumulation(global_batch, micro, dp, notes)

    size = model_size(spec.model)
    seq_len = size.seq_len if size else (spec.model.seq_len or PRESETS[DEFAULT_PRESET]["seq_len"])
    n_params, source = _param_count(size, params, notes)
    fpt = _flops_per_token(size, n_params, seq_len, notes)

    peak = peak_flops(gpu_name, dtype) if on_gpu else None
    if on_gpu and peak is None:
        notes.append(f"{label} has no {dtype} tensor cores: no step-time estimate"
                     + (" (fp8 needs compute capability >= 8.9)" if dtype == "fp8" else ""))
    usable = round(mem * (1 - headroom)) if mem else None

    sp = spec.parallelism.sequence_parallel_on
    inputs = _Inputs(size, n_params or 0, dp, dtype, opt_bytes, spec.model.dropout, usable, tp, sp)
    memory = tuple(inputs.memory(s, micro, t.activation_checkpointing) for s in STRATEGIES) if n_params else ()
    memory, host_node = _offloaded(spec, memory, strategy, usable, notes)
    pipeline = None
    if pp > 1 and size is not None and n_params:
        memory, pipeline = plan_pp.split_memory(memory, size, spec.parallelism, accum or 1, n_params, usable)
        if pipeline is not None:
            notes.append(f"pipeline: the memory rows are the busiest pipeline rank's ({pipeline.schedule}, "
                         f"{pipeline.micro_batches} micro-batches, bubble {pipeline.bubble:.0%} of a step)")
    current = next((m for m in memory if m.strategy == strategy), None)
    flops_step = fpt * global_batch * seq_len if fpt else None
    step_time = flops_step / (world * peak * mfu) if flops_step and peak else None
    if step_time and pipeline is not None:
        step_time /= 1 - pipeline.bubble  # the idle share of each rank's step
    suggestion = _suggestion(inputs, strategy, micro, t.activation_checkpointing, global_batch, dp, n_params)
    suggestion += _tp_suggestion(inputs, current, size, spec.workers.procs, micro, t.activation_checkpointing)
    if pipeline is not None and current is not None:
        suggestion = _pp_suggestion(memory, current, usable, pipeline)
    tp_comm = plan_tp.collectives(size, micro, accum or 1, dtype, tp, sp) if size and tp > 1 else None
    _common_notes(notes, dtype, t.activation_checkpointing, size, on_gpu)
    if gpu is None and on_gpu:
        notes.append(f"no --gpu given: planned for {DEFAULT_GPU}")
    if t.compile:
        notes.append("training.compile: activations are estimated for eager mode (torch.compile usually saves less)")

    return Plan(
        name=name, model=describe_model(spec.model, size), n_params=n_params, params_source=source, gpt=size,
        flops_per_token=fpt, world_size=world, gpu=label, gpu_memory_bytes=mem, usable_bytes=usable,
        peak_flops=peak, dtype=dtype, strategy=strategy, optimizer=optimizer, global_batch=global_batch,
        micro_batch=micro, accum_steps=accum, seq_len=seq_len, activation_checkpointing=t.activation_checkpointing,
        activations=_activations(inputs, micro, strategy), memory=memory,
        flops_per_step=flops_step, mfu=mfu, step_time_s=step_time,
        tokens_per_s=global_batch * seq_len / step_time if step_time else None,
        run_time_s=step_time * t.max_steps if step_time else None, max_steps=t.max_steps,
        fits=current.fits if current else None, suggestion=suggestion, notes=tuple(notes),
        tensor_parallel=tp, sequence_parallel=sp, data_parallel=dp, tp_collectives=tp_comm,
        host_bytes_per_node=host_node, pipeline_parallel=pp, pipeline=pipeline,
    )


def _pp_suggestion(memory: tuple[StrategyMemory, ...], current: StrategyMemory, usable: int | None,
                   pipeline: plan_pp.PipelinePlan) -> str:
    """The verdict on the busiest pipeline rank (the unsplit suggestions do not apply)."""
    where = f"on the busiest pipeline rank (pp rank {pipeline.worst.rank})"
    if usable is None:
        return f"{current.strategy}: {_gib(current.total_bytes)} per rank {where}; no GPU to fit"
    if current.fits:
        return f"{current.strategy} fits: {_gib(current.total_bytes)} of {_gib(usable)} usable {where}"
    others = [m.strategy for m in memory if m.fits]
    alt = f"; {', '.join(others)} would fit" if others else \
        "; raise pipelineParallel or tensorParallel, lower microBatchSize or turn on activationCheckpointing"
    return f"{current.strategy} does not fit: {_gib(current.total_bytes)} > {_gib(usable)} usable {where}{alt}"


def _offloaded(spec: api.TrainingJobSpec, memory: tuple[StrategyMemory, ...], strategy: str, usable: int | None,
               notes: list[str]) -> tuple[tuple[StrategyMemory, ...], int | None]:
    """parallelism.offload cpu (DeepSpeed offload_optimizer / offload_param): FSDP2's CPU offload keeps the
    rank's parameter, gradient and optimizer-state shards in host memory; the GPU keeps the working set and
    the activations. Returns the memory with the job's strategy offloaded, and host bytes per node."""
    off = spec.parallelism.offload
    if off is None or off.device != "cpu" or strategy not in ("zero2", "zero3"):
        return memory, None
    out = []
    host_rank = 0
    for m in memory:
        if m.strategy == strategy:
            host_rank = m.params_bytes + m.grads_bytes + m.optimizer_bytes
            total = m.total_bytes - host_rank
            m = dataclasses.replace(m, params_bytes=0, grads_bytes=0, optimizer_bytes=0, total_bytes=total,
                                    fits=None if usable is None else total <= usable)
        out.append(m)
    procs = spec.workers.procs
    host_node = host_rank * procs
    notes.append(f"parallelism.offload cpu: {_gib(host_rank)} of parameter, gradient and optimizer shards per "
                 f"rank live in host memory ({_gib(host_node)} per node of {procs} process"
                 f"{'es' if procs != 1 else ''}); the {strategy} row shows what stays on the GPU (the verdict counts "
                 "them on the GPU)")
    return tuple(out), host_node


def _activations(inputs: _Inputs, micro: int, strategy: str) -> Activations | None:
    if inputs.tp == 1 or inputs.size is None:
        return activations_for(inputs.size, micro, inputs.dtype, strategy, inputs.dropout)
    at = {ac: plan_tp.activation_bytes(inputs.size, micro, inputs.dtype, strategy, checkpointing=ac,
                                       dropout=inputs.dropout, tp=inputs.tp, sequence_parallel=inputs.sp)
          for ac in (False, True)}
    return Activations(micro, at[False], at[True])


def _tp_suggestion(inputs: _Inputs, current: StrategyMemory | None, size: GPTSize | None, procs: int,
                   micro: int, checkpointing: bool) -> str:
    """When no strategy fits at this tensorParallel: the smallest larger one (dividing procsPerWorker,
    nHeads and vocabSize) with which one does."""
    if inputs.usable is None or current is None or size is None:
        return ""
    if any(inputs.memory(s, micro, checkpointing).fits for s in STRATEGIES if s != "zero1" or inputs.tp == 1):
        return ""
    for tp in plan_tp.tp_options(size, procs, inputs.tp):
        if (inputs.world_size * inputs.tp) % tp:
            continue
        wider = inputs.with_tp(tp)
        for s in ("ddp", "zero2", "zero3"):
            m = wider.memory(s, micro, checkpointing)
            if m.fits:
                return (f"; tensor parallelism is needed to fit: tensorParallel {tp} with {s} fits "
                        f"({_gib(m.total_bytes)} per GPU)")
    return ""


def known_gpus() -> list[str]:
    return list(GPU_PEAK_TFLOPS)


def _resolve_gpu(gpu_name: str) -> tuple[str | None, int | None]:
    """(table name, memory bytes); (None, None) for a CPU. Raises PlanError for an unknown GPU."""
    if gpu_name.strip().lower() in CPU_NAMES:
        return None, None
    label, mem = gpu_label(gpu_name), gpu_memory_bytes(gpu_name)
    if label is None or mem is None:
        raise PlanError(f"unknown GPU {gpu_name!r}; known: {', '.join(known_gpus())} (or cpu)")
    return label, mem


def _accumulation(global_batch: int, micro: int, world: int, notes: list[str]) -> int | None:
    # The trainer splits any global batch over any world size up to it (unevenly if need be):
    # every rank runs ceil(ceil(G / W) / micro) micro-steps.
    if global_batch < world:
        notes.append(f"globalBatchSize {global_batch} is smaller than the world size {world}: "
                     "the trainer refuses this layout")
        return None
    per_rank = math.ceil(global_batch / world)
    return math.ceil(per_rank / micro)


def _param_count(size: GPTSize | None, params: int | None, notes: list[str]) -> tuple[int | None, str]:
    if size is None:
        if params is None:
            notes.append("an entrypoint model's size is unknown here: pass --params N (e.g. --params 1.3B) "
                         "for memory and FLOPs")
            return None, "unknown"
        notes.append("entrypoint model: activations are not estimated (architecture unknown); memory is "
                     "model states only")
        return params, "--params"
    exact = gpt_param_breakdown(size).total
    if params is not None and params != exact:
        notes.append(f"--params {params} overrides the built-in GPT's exact count {exact}")
        return params, "--params"
    return exact, "built-in GPT"


def _flops_per_token(size: GPTSize | None, n_params: int | None, seq_len: int, notes: list[str]) -> float | None:
    if size is not None and n_params == gpt_param_breakdown(size).total:
        return gpt_flops_per_token(size)
    if size is not None and n_params:
        return flops_per_token(n_params, size.n_layers, size.d_model, size.seq_len)
    if n_params:
        notes.append("FLOPs per token = 6N only (the attention term needs the architecture)")
        return flops_per_token(n_params, 0, 0, seq_len)
    return None


def _suggestion(inputs: _Inputs, strategy: str, micro: int, checkpointing: bool, global_batch: int,
                world: int, n_params: int | None) -> str:
    if not n_params:
        return "pass --params N to size the model"
    if inputs.usable is None:
        return "CPU job: memory per process shown, no GPU to fit"
    options = micro_batch_options(global_batch, world) or [micro]
    text = suggest(inputs, strategy, micro, checkpointing, options)
    return text if inputs.size else f"model states only (activations unknown): {text}"


def _common_notes(notes: list[str], dtype: str, checkpointing: bool, size: GPTSize | None, on_gpu: bool) -> None:
    if on_gpu and checkpointing:
        notes.append("activation checkpointing recomputes the forward (8N instead of 6N hardware FLOPs per "
                     "token): expect a lower MFU than without it")
    if dtype == "fp8":
        notes.append("fp8: activations and copies are estimated as bf16 (fp8 layers save less)")
    if on_gpu and dtype == "fp32":
        notes.append("fp32 runs on CUDA cores (the trainer does not enable TF32): peak is the fp32 rate")
    if size is not None and size.d_model % size.n_heads:
        notes.append(f"dModel {size.d_model} is not divisible by nHeads {size.n_heads}: the trainer refuses it")


__all__ = [
    "DEFAULT_GPU",
    "DEFAULT_HEADROOM",
    "DEFAULT_MFU",
    "STRATEGIES",
    "Activations",
    "Plan",
    "PlanError",
    "StrategyMemory",
    "activation_bytes",
    "known_gpus",
    "micro_batch_options",
    "model_size",
    "optimizer_state_bytes",
    "plan",
    "strategy_memory",
    "working_bytes",
    "zero_paper_bytes",
]
