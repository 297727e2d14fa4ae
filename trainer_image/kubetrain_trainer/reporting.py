"""What each step leaves behind: the in-memory history, the JSONL metrics log (global rank 0), the
/metrics and /progress server (local rank 0), the steady-state throughput, and the run's Summary.

Progress reporting never stops training: a port that cannot be bound is a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import JobConfig
from .distributed import DistContext
from .metrics import JsonlLog, MetricsServer, Progress, Throughput, now_rfc3339

log = logging.getLogger("kubetrain_trainer")


@dataclass
class Summary:
    steps: int
    applied_steps: int
    skipped_steps: int
    final_loss: float | None
    eval_loss: float | None
    tokens_per_s: float | None
    mfu: float | None
    wall_time_s: float
    world_size: int
    history: list[dict[str, Any]] = field(default_factory=list)


class Reporter:
    """Records step results where they belong. ``keep_history``: every record in memory (tests,
    benchmarks)."""

    def __init__(self, cfg: JobConfig, ctx: DistContext, run_dir: Path | None, *, metrics_port: int,
                 throughput: Throughput, keep_history: bool) -> None:
        self.ctx, self.throughput, self.keep_history = ctx, throughput, keep_history
        self.max_steps, self.log_every = cfg.training.max_steps, cfg.training.log_every
        self.progress = Progress(cfg.training.max_steps, ctx.world_size, trainingjob=cfg.name,
                                 checkpoint_interval=cfg.checkpoint.interval_steps, device=ctx.device.type)
        self.server: MetricsServer | None = None
        if metrics_port and ctx.is_local_main:
            try:
                self.server = MetricsServer(self.progress, metrics_port)
            except OSError as e:  # progress reporting must never stop training
                log.warning("cannot serve /metrics on port %d: %s", metrics_port, e)
        self.log: JsonlLog | None = None
        if run_dir is not None and ctx.is_main:
            self.log = JsonlLog(run_dir / "metrics.jsonl")
        self.history: list[dict[str, Any]] = []
        self.last_record: dict[str, Any] | None = None
        self._steady = [0, 0.0]  # steps after the first of this fit(), their summed step time

    def record(self, rec: dict[str, Any]) -> None:
        if self.keep_history:
            self.history.append(rec)
        if self.last_record is not None:  # the first step of a fit() includes warm-up: leave it out
            self._steady[0] += 1
            self._steady[1] += rec["step_time"]
        self.last_record = rec
        last = rec["step"] >= self.max_steps
        if rec["step"] % self.log_every == 0 or last or "eval_loss" in rec:
            if self.log is not None:
                self.log.write({**rec, "time": now_rfc3339()})
            if self.ctx.is_local_main:
                self.progress.update(rec)

    def checkpoint_committed(self, step: int, seconds: float | None) -> None:
        self.progress.checkpoint_committed(step, seconds)

    def summary(self, *, steps: int, applied_steps: int, skipped_steps: int, eval_loss: float | None,
                wall_time_s: float) -> Summary:
        """The run so far; throughput and MFU over the steady steps (warm-up left out)."""
        n, total = self._steady
        tps, mfu = self.throughput.measure(total / n) if n else (None, None)
        last = self.last_record
        return Summary(
            steps=steps,
            applied_steps=applied_steps,
            skipped_steps=skipped_steps,
            final_loss=last["loss"] if last else None,
            eval_loss=eval_loss,
            tokens_per_s=tps,
            mfu=mfu,
            wall_time_s=wall_time_s,
            world_size=self.ctx.world_size,
            history=self.history,
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.log is not None:
            self.log.close()
