"""`kubetrain plan` for pipeline parallelism (issue 20): per-stage memory and the schedule's bubble.

The trainer (`kubetrain_trainer.pipeline_parallel`) splits the built-in GPT at
`kubetrain.api.pipeline.gpt_split`'s boundaries; pp rank r runs stages r, r + pp, ... Per rank:

- model states: the strategy's bytes per parameter (the unsplit plan's row, over the dp x tp ranks
  of a stage) times the parameters of the rank's stages (a tied head's copy counted on the last);
- activations: one micro-batch's activations of the rank's blocks times the micro-batches in
  flight at its peak -- GPipe keeps all m; 1F1B keeps pp - r (the first rank the most); the
  interleaved schedules, v stages per rank, about (pp - r) + (v - 1) pp of a stage's size.
- the bubble: `kubetrain.api.pipeline_schedules.bubble_fraction` (idle share of a step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kubetrain import api
from kubetrain.api.modelsize import GPTSize
from kubetrain.api.pipeline import gpt_split, n_stages, schedule_of, stage_params
from kubetrain.api.pipeline_schedules import SCHEDULES, bubble_fraction


@dataclass(frozen=True)
class StageRow:
    stage: int
    rank: int  # pp rank
    first_block: int
    last_block: int
    params: int
    embeddings: bool
    head: bool


@dataclass(frozen=True)
class RankMemory:
    rank: int
    stages: tuple[int, ...]
    params: int
    in_flight: int  # micro-batches whose activations the rank holds at its peak
    states_bytes: int  # the chosen strategy's params + grads + optimizer + working
    activations_bytes: int | None
    total_bytes: int


@dataclass(frozen=True)
class PipelinePlan:
    pipeline_parallel: int
    schedule: str
    stages_per_rank: int
    micro_batches: int
    bubble: float
    stages: tuple[StageRow, ...]
    ranks: tuple[RankMemory, ...]

    @property
    def worst(self) -> RankMemory:
        return max(self.ranks, key=lambda r: r.total_bytes)


def in_flight(schedule: str, pp: int, rank: int, m: int) -> int:
    """Micro-batches (of one stage's size) whose activations pp rank ``rank`` holds at its peak."""
    sched = SCHEDULES[schedule]
    v = sched.stages_per_rank
    if not sched.one_f_one_b:
        return m * v
    return min(m * v, (pp - rank) + (v - 1) * pp)


def pipeline_plan(size: GPTSize, par: api.ParallelismSpec, micro_batches: int, chosen: Any,
                  n_params: int) -> PipelinePlan:
    """``chosen``: the unsplit plan's ``StrategyMemory`` of the job's strategy (per dp x tp rank)."""
    pp = par.pipeline_parallel
    sched = schedule_of(par)
    split = gpt_split(size, par)
    counts = stage_params(size, split)
    n = n_stages(par)
    rows = tuple(
        StageRow(s, s % pp, split.blocks(s).start, split.blocks(s).stop - 1, counts[s], s == 0, s == n - 1)
        for s in range(n)
    )
    states = chosen.params_bytes + chosen.grads_bytes + chosen.optimizer_bytes + chosen.working_bytes
    ranks = []
    for r in range(pp):
        mine = [row for row in rows if row.rank == r]
        params = sum(row.params for row in mine)
        blocks = sum(row.last_block - row.first_block + 1 for row in mine)
        flight = in_flight(sched.name, pp, r, micro_batches)
        st = round(states * params / n_params)
        act = None
        if chosen.activations_bytes is not None:
            # one micro-batch of one stage's blocks (the unsplit row covers all blocks)
            per_stage_mb = chosen.activations_bytes * blocks / len(mine) / size.n_layers
            act = round(per_stage_mb * flight)
        ranks.append(RankMemory(r, tuple(row.stage for row in mine), params, flight, st, act, st + (act or 0)))
    return PipelinePlan(pp, sched.name, sched.stages_per_rank, micro_batches,
                        bubble_fraction(sched.name, pp, micro_batches), rows, tuple(ranks))


def split_memory(memory: tuple[Any, ...], size: GPTSize, par: api.ParallelismSpec, micro_batches: int,
                 n_params: int, usable: int | None) -> tuple[tuple[Any, ...], PipelinePlan | None]:
    """Each strategy's row as the busiest pp rank holds it; the job's pipeline plan (for its strategy)."""
    out = []
    chosen_plan = None
    strategy = par.strategy or "ddp"
    for m in memory:
        pplan = pipeline_plan(size, par, micro_batches, m, n_params)
        w = pplan.worst
        frac = w.params / n_params
        act = w.activations_bytes
        new = dataclasses.replace(
            m, params_bytes=round(m.params_bytes * frac), grads_bytes=round(m.grads_bytes * frac),
            optimizer_bytes=round(m.optimizer_bytes * frac), working_bytes=round(m.working_bytes * frac),
            activations_bytes=act, paper_bytes=round(m.paper_bytes * frac),
        )
        total = new.params_bytes + new.grads_bytes + new.optimizer_bytes + new.working_bytes + (act or 0)
        out.append(dataclasses.replace(new, total_bytes=total, fits=None if usable is None else total <= usable))
        if m.strategy == strategy:
            chosen_plan = pplan
    return tuple(out), chosen_plan
