"""The contract of `spec.parallelism.pipelineParallel` (pp): schedules, stage split, bubble, checks.

A job's processes form a `(pp, dp, tp)` mesh: the model's layers are split into stages (one per pp
rank, or two per rank for the interleaved schedules), the micro-batches of a step -- its
gradient-accumulation steps -- flow through them, and the data-parallel size is
`world / (pp x tp)`. This module is pure Python: the trainer's split (`kubetrain_trainer.
pipeline_parallel`), `kubetrain plan` (per-stage memory, bubble fraction) and the validator all read
it.

Rules:
- `pp x tp` divides the world size (`workers.replicas x procsPerWorker`, at every replica count of
  an elastic job): CEL at apply, `pp_problems` for the elastic range.
- The 1F1B-family schedules (1F1B, Interleaved1F1B, ZeroBubble) need at least `pp` micro-batches
  per step: their steady state keeps one micro-batch in flight per stage, so with fewer the schedule
  cannot be built (torch refuses it) and the pipeline never fills. GPipe runs any number (with a
  large bubble). The interleaved ones also need the micro-batches to be a multiple of their rounds
  (`max(1, m // pp)`), as torch's schedules do.
- A custom model (`model.entrypoint`) needs `model.pipelineSplit` with pp > 1.
- zero1 is refused (ZeroRedundancyOptimizer owns whole parameters over the world group); zero2 and
  zero3 run FSDP2 inside each stage over the dp sub-mesh, ddp all-reduces each stage's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetrain import api
from kubetrain.api.pipeline_schedules import DEFAULT_SCHEDULE, SCHEDULES, Schedule, bubble_fraction
from kubetrain.api.problems import Problem

__all__ = ["SCHEDULES", "Schedule", "StageSplit", "bubble_fraction", "cel_rules", "gpt_split", "pp_problems"]


def schedule_of(par: api.ParallelismSpec) -> Schedule:
    return SCHEDULES[par.pipeline_schedule or DEFAULT_SCHEDULE]


def n_stages(par: api.ParallelismSpec) -> int:
    """Pipeline stages in all: pp x the schedule's stages per rank (1 without pipelining)."""
    if par.pipeline_parallel == 1:
        return 1
    return par.pipeline_parallel * schedule_of(par).stages_per_rank


def stage_ranks(stage: int, pp: int) -> int:
    """The pp rank that runs ``stage`` (torch's loop placement: rank r holds r, r + pp, ...)."""
    return stage % pp


# ----------------------------------------------------------------------------- split

def balanced_boundaries(costs: list[int], n: int, first: int = 0, last: int = 0) -> list[int]:
    """Blocks of costs ``costs`` split into ``n`` contiguous non-empty stages, the first stage also
    carrying ``first`` (embeddings) and the last ``last`` (final norm + head), minimising the largest
    stage. Returns the block index each stage after the first starts at (``n - 1`` entries)."""
    L = len(costs)
    if n < 1 or n > L:
        raise ValueError(f"cannot split {L} blocks into {n} non-empty stages")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def cost(i: int, j: int, k: int) -> int:  # blocks [i, j) as stage k
        return prefix[j] - prefix[i] + (first if k == 0 else 0) + (last if k == n - 1 else 0)

    INF = float("inf")
    # best[k][j]: the smallest max stage cost placing blocks [0, j) into stages 0..k
    best = [[INF] * (L + 1) for _ in range(n)]
    cut: list[list[int]] = [[0] * (L + 1) for _ in range(n)]
    for j in range(1, L + 1):
        best[0][j] = cost(0, j, 0)
    for k in range(1, n):
        for j in range(k + 1, L + 1):
            for i in range(k, j):
                value = max(best[k - 1][i], cost(i, j, k))
                if value < best[k][j]:  # ties: the earlier cut (more blocks on later stages)
                    best[k][j], cut[k][j] = value, i
    out, j = [], L
    for k in range(n - 1, 0, -1):
        j = cut[k][j]
        out.append(j)
    return out[::-1]


@dataclass(frozen=True)
class StageSplit:
    """The built-in GPT's stages: block ranges, which holds embeddings / head, parameter counts."""

    boundaries: tuple[int, ...]
    n_layers: int

    @property
    def n(self) -> int:
        return len(self.boundaries) + 1

    def blocks(self, stage: int) -> range:
        starts = (0, *self.boundaries)
        ends = (*self.boundaries, self.n_layers)
        return range(starts[stage], ends[stage])


def gpt_split(size: Any, par: api.ParallelismSpec) -> StageSplit:
    """The stages of the built-in GPT (``modelsize.GPTSize``) under ``par``: pipelineBoundaries when
    given, else balanced by parameter count (embeddings first, final norm + head last; a tied head's
    weight is a copy on the last stage, counted there)."""
    from kubetrain.api.modelsize import gpt_param_breakdown

    n = n_stages(par)
    if par.pipeline_boundaries is not None:
        return StageSplit(tuple(par.pipeline_boundaries), size.n_layers)
    b = gpt_param_breakdown(size)
    head = b.head or b.token_embedding
    bounds = balanced_boundaries([b.per_layer] * size.n_layers, n,
                                 b.token_embedding + b.position_embedding, b.final_norm + head)
    return StageSplit(tuple(bounds), size.n_layers)


def stage_params(size: Any, split: StageSplit) -> list[int]:
    """Parameters each stage holds (a tied head's copy counted on the last stage)."""
    from kubetrain.api.modelsize import gpt_param_breakdown

    b = gpt_param_breakdown(size)
    out = []
    for s in range(split.n):
        n = len(split.blocks(s)) * b.per_layer
        if s == 0:
            n += b.token_embedding + b.position_embedding
        if s == split.n - 1:
            n += b.final_norm + (b.head or b.token_embedding)
        out.append(n)
    return out


# ----------------------------------------------------------------------------- checks

PP = "(has(self.parallelism) && has(self.parallelism.pipelineParallel) ? self.parallelism.pipelineParallel : 1)"
_TP = "(has(self.parallelism) && has(self.parallelism.tensorParallel) ? self.parallelism.tensorParallel : 1)"
_REPLICAS = "(has(self.workers) && has(self.workers.replicas) ? self.workers.replicas : 1)"
_ENTRYPOINT = "(has(self.model) && has(self.model.entrypoint))"


def cel_rules(procs: str) -> tuple[api.CelRule, ...]:
    """Spec-level rules (workers, model and parallelism together). ``procs``: CEL for procsPerWorker."""
    return (
        api.CelRule(
            rule=f"{PP} == 1 || ({_REPLICAS} * {procs}) % ({PP} * {_TP}) == 0",
            message="parallelism.pipelineParallel x tensorParallel must divide the world size (workers.replicas x "
            "procsPerWorker): choose replicas or procsPerWorker so that every data-parallel replica gets whole "
            "pipelines",
            field_path=".parallelism.pipelineParallel",
        ),
        api.CelRule(
            rule=f"{PP} == 1 || !{_ENTRYPOINT} || has(self.model.pipelineSplit)",
            message="parallelism.pipelineParallel > 1 with model.entrypoint needs model.pipelineSplit: export a "
            "function (model, stage_index, num_stages) -> that stage's module and name it there, or set "
            "pipelineParallel 1",
            field_path=".model.entrypoint",
        ),
    )


def micro_batches(spec: api.TrainingJobSpec, global_batch: int, micro: int | None, dp: int) -> tuple[int, str]:
    """(micro-batches per step on one data-parallel rank, how it was derived). Without a micro-batch
    size a pipeline gets ``pp`` micro-batches (``globalBatchSize / (dp x pp)`` samples each)."""
    pp = spec.parallelism.pipeline_parallel
    if micro is None:
        return pp, f"no microBatchSize: {pp} micro-batches of globalBatchSize / (data-parallel {dp} x {pp})"
    return max(1, -(-global_batch // dp) // micro), f"globalBatchSize {global_batch} / (data-parallel {dp} x " \
        f"microBatchSize {micro})"


def pp_problems(spec: api.TrainingJobSpec, raw_spec: dict[str, Any]) -> list[Problem]:
    """What CEL cannot see: the elastic range, the built-in GPT's layers vs the stages, the boundaries,
    the micro-batches the schedule needs (at the nominal world size), zero1 from a DeepSpeed config."""
    del raw_spec
    par = spec.parallelism
    pp, tp = par.pipeline_parallel, par.tensor_parallel
    if pp == 1:
        return []
    problems: list[Problem] = []
    path = "spec.parallelism.pipelineParallel"
    w = spec.workers
    bad = [n for n in range(w.min, w.max + 1) if (n * w.procs) % (pp * tp)]
    if bad and w.min != w.max:
        problems.append(Problem(
            path, f"pipelineParallel {pp} x tensorParallel {tp} does not divide the world size at "
            f"{len(bad)} replica count(s) of the elastic range [{w.min}, {w.max}] (e.g. {bad[0]} x {w.procs})",
            "choose procsPerWorker a multiple of pipelineParallel x tensorParallel, or narrow "
            "minReplicas/maxReplicas to counts that divide",
        ))
    sched = schedule_of(par)
    stages = n_stages(par)
    if spec.model.entrypoint is None:
        from kubetrain.api.modelsize import model_shape

        layers = model_shape(spec.model).n_layers
        bounds = par.pipeline_boundaries
        if bounds is not None:
            if len(bounds) != stages - 1:
                problems.append(Problem(
                    "spec.parallelism.pipelineBoundaries",
                    f"has {len(bounds)} entries; {sched.name} with pipelineParallel {pp} has {stages} stages "
                    f"({sched.stages_per_rank} per rank), so it needs {stages - 1}",
                    f"give {stages - 1} block indices where stages 1..{stages - 1} start, or remove it "
                    "(balanced by parameter count)",
                ))
            elif any(b <= a for a, b in zip([0, *bounds], [*bounds, layers], strict=True)):
                problems.append(Problem(
                    "spec.parallelism.pipelineBoundaries",
                    f"{bounds} must be strictly increasing block indices in 1..{layers - 1} (every stage holds at "
                    f"least one of the model's {layers} blocks)",
                    "fix the indices, or remove the field (balanced by parameter count)",
                ))
        elif layers < stages:
            problems.append(Problem(
                path, f"{stages} pipeline stages ({sched.stages_per_rank} per rank) need at least {stages} "
                f"transformer blocks; the model has {layers}",
                "raise model.nLayers or lower pipelineParallel (or use a schedule with one stage per rank)",
            ))
    from kubetrain.api.deepspeed import analyse  # imports the models; keep import order light
    from kubetrain.api.deepspeed.values import nominal_world_size

    resolution = analyse(spec)
    if resolution.problems:
        return problems
    resolved = resolution.spec
    if resolved.parallelism.strategy == "zero1" and par.strategy != "zero1":
        problems.append(Problem(
            "spec.deepspeed.zero_optimization.stage",
            f"stage 1 (zero1) with parallelism.pipelineParallel {pp} is not supported",
            "use zero2 (also shards gradients over the data-parallel ranks), zero3 or ddp",
        ))
    if (w.replicas * w.procs) % (pp * tp):
        return problems  # the CEL rule says so
    dp = nominal_world_size(spec)
    G = resolved.training.global_batch_size or 8
    micro = resolved.training.micro_batch_size
    m, how = micro_batches(spec, G, micro, dp)
    if micro is None and G % (dp * pp):
        problems.append(Problem(
            "spec.training.microBatchSize",
            f"is not set, so a pipeline of {pp} stages splits each data-parallel rank's share into {pp} "
            f"micro-batches, but globalBatchSize {G} is not a multiple of data-parallel {dp} x {pp}",
            f"set microBatchSize, or globalBatchSize to a multiple of {dp * pp}",
        ))
        return problems
    if micro is not None and G % (dp * micro):
        problems.append(Problem(
            "spec.training.globalBatchSize",
            f"{G} is not a multiple of data-parallel {dp} x microBatchSize {micro}: a pipeline needs equal "
            "micro-batches on every data-parallel rank",
            f"set globalBatchSize to a multiple of {dp * micro}",
        ))
        return problems
    if sched.one_f_one_b and m < pp:
        problems.append(Problem(
            "spec.training.microBatchSize",
            f"gives {m} micro-batches per step ({how}), fewer than pipelineParallel {pp}: {sched.name} keeps one "
            "micro-batch in flight per stage in its steady state, so it needs at least as many micro-batches as "
            "stages (torch refuses the schedule otherwise)",
            f"lower microBatchSize to at most {max(1, G // (dp * pp))} (or raise globalBatchSize), or use "
            "pipelineSchedule GPipe",
        ))
    elif sched.stages_per_rank > 1 and m % max(1, m // pp):
        rounds = max(1, m // pp)
        problems.append(Problem(
            "spec.training.microBatchSize",
            f"gives {m} micro-batches per step ({how}); {sched.name} runs them in rounds of {pp} and needs a "
            f"multiple of its {rounds} rounds",
            f"choose sizes giving a multiple of {pp} micro-batches",
        ))
    return problems
