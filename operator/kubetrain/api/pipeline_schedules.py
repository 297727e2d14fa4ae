"""Pipeline schedules by name: the canonical names, torch's class names, and each one's bubble in
theory. Imports nothing (the models normalise `spec.parallelism.pipelineSchedule` with it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    name: str  # canonical spelling (spec.parallelism.pipelineSchedule after normalisation)
    torch_class: str  # torch.distributed.pipelining class
    stages_per_rank: int  # virtual stages per pp rank
    one_f_one_b: bool  # 1F1B family: needs micro-batches >= pp
    split_backward: bool  # backward split into input and weight gradients (zero bubble)


SCHEDULES: dict[str, Schedule] = {
    "GPipe": Schedule("GPipe", "ScheduleGPipe", 1, False, False),
    "1F1B": Schedule("1F1B", "Schedule1F1B", 1, True, False),
    "Interleaved1F1B": Schedule("Interleaved1F1B", "ScheduleInterleaved1F1B", 2, True, False),
    "ZeroBubble": Schedule("ZeroBubble", "ScheduleInterleavedZeroBubble", 2, True, True),
}
DEFAULT_SCHEDULE = "1F1B"
_ALIASES = {
    **{name.lower(): name for name in SCHEDULES},
    **{s.torch_class.lower(): name for name, s in SCHEDULES.items()},
    "interleavedzerobubble": "ZeroBubble", "zb": "ZeroBubble", "zb1p": "ZeroBubble",
}
_UNSUPPORTED = {
    "schedulezbvzerobubble": "the V-shaped ZBV schedule puts the first and the last stage on one rank",
    "scheduledualpipev": "DualPipeV puts the first and the last stage on one rank",
    "scheduleloopedbfs": "LoopedBFS is not offered",
}


def canonical_schedule(value: str) -> str:
    """A schedule name in any case, ours or torch's class name -> the canonical name (ValueError
    naming the accepted ones otherwise)."""
    key = value.strip().lower().replace("-", "").replace("_", "")
    if key in _ALIASES:
        return _ALIASES[key]
    why = _UNSUPPORTED.get(key) or _UNSUPPORTED.get("schedule" + key)
    accepted = ", ".join(SCHEDULES) + " (or torch's " + ", ".join(s.torch_class for s in SCHEDULES.values()) + ")"
    raise ValueError(f"unknown pipeline schedule {value!r}{f' ({why})' if why else ''}: use one of {accepted}")


def bubble_fraction(schedule: str, pp: int, microbatches: int) -> float:
    """The idle fraction of a step per rank, in theory, with equal stages and the backward costing
    twice the forward (input-gradient and weight-gradient halves equal):

    - GPipe, 1F1B: (p - 1) / (m + p - 1) (1F1B saves activation memory, not bubble);
    - Interleaved1F1B with v stages per rank: (p - 1) / (v m + p - 1);
    - ZeroBubble (ZB1P, interleaved, v stages per rank): weight-gradient work fills the warm-up and
      cool-down slots, leaving about a third: (p - 1) / (3 v m + p - 1).
    """
    p, m = pp, microbatches
    if p <= 1:
        return 0.0
    s = SCHEDULES[schedule]
    v = s.stages_per_rank
    if s.split_backward:
        return (p - 1) / (3 * v * m + p - 1)
    return (p - 1) / (v * m + p - 1)


