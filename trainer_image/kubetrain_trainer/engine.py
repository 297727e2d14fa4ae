"""The training loop: one optimizer step = exactly globalBatchSize samples, at any world size.

Step numbering: ``step`` counts iterations (each consumes a global batch, including skipped ones);
``applied_steps`` counts optimizer updates and indexes the lr schedule (``lr_at(applied_steps)``),
so overflow-skipped fp16 steps do not advance it (DESIGN.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubetrain.api.schedules import LRSchedule, ScheduleError, make_schedule
from kubetrain_trainer.loss_scale import LossScaleAtMinimumError

from . import fp8
from .config import JobConfig
from .data import Loader, make_plan, open_corpus
from .distributed import DistContext
from .errors import DivergedError, SpecError
from .faults import Faults
from .metrics import (
    JsonlLog,
    MetricsServer,
    Progress,
    Throughput,
    monotonic,
    now_rfc3339,
    peak_flops,
    peak_memory_bytes,
)
from .models import build_model
from .optim import build_optimizer, set_lr
from .parallel import check_combination, parallelize
from .precision import make_plan as make_precision_plan
from .sync import make_syncer, replicate_only
from .tensor_parallel import make_mesh

log = logging.getLogger("kubetrain_trainer")

Callback = Callable[["Trainer", dict[str, Any]], None]


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


class Trainer:
    def __init__(
        self,
        cfg: JobConfig,
        ctx: DistContext,
        run_dir: Path | None = None,
        *,
        metrics_port: int = 0,
        faults: Faults | None = None,
        callbacks: Sequence[Callback] = (),
        keep_history: bool = True,
    ) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.run_dir = run_dir
        self.faults = faults or Faults()
        self.callbacks = list(callbacks)
        self.step = 0  # next iteration to run == iterations done
        self.applied_steps = 0
        self.consecutive_non_finite = 0
        # Preemption: a signal handler sets stop_signal on its rank; the flag is summed into the step's
        # all-reduce, so every rank sets stop_requested after the same step (and stops there).
        self.stop_signal = False
        self.stop_requested = False
        # More per-rank flags summed with the step's stats, no extra collective (checkpoint.py: "my
        # async save is done"); the sums of the last step in flag_sums, in registration order.
        self.flag_sources: list[Callable[[], float]] = []
        self.flag_sums: list[float] = []
        self.last_checkpoint_step: int | None = None
        t = cfg.training

        self.precision = make_precision_plan(cfg.precision, cfg.strategy, ctx.device)
        if cfg.dtype == "fp8":
            fp8.check_supported(ctx.device)
        check_combination(cfg.strategy, cfg.dtype)
        # Tensor parallelism: a (dp, tp) mesh; the batch is split over the dp ranks only (the tp ranks
        # of a group read the same samples), so every step still consumes exactly globalBatchSize.
        tp = cfg.parallel.tensor_parallel
        self.mesh = make_mesh(ctx.device.type, ctx.world_size, ctx.local_world_size, tp) if tp > 1 else None
        self.dp_size, self.dp_rank = ctx.world_size // tp, ctx.rank // tp
        self.batch_plan = make_plan(cfg.global_batch_size, t.micro_batch_size, self.dp_size, self.dp_rank)
        try:
            self.schedule: LRSchedule = make_schedule(cfg.schedule_type, cfg.schedule.params or {}, base_lr=cfg.lr)
        except ScheduleError as e:
            raise SpecError(f"spec.lrSchedule.{'type' if e.key == 'type' else 'params.' + e.key}: {e.message}") from None

        # Data before the model: a missing path fails fast, before an expensive model build.
        corpus = open_corpus(cfg.data, vocab_size=cfg.shape.vocab_size, seq_len=cfg.shape.seq_len, seed=t.seed)

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        with torch.device(ctx.device):
            built = build_model(cfg.model)
        if cfg.dtype == "fp8":
            self.fp8_impl = fp8.convert(built.module)
        self.built = built
        self.par = parallelize(
            built, cfg.strategy, self.precision, ctx,
            activation_checkpointing=t.activation_checkpointing, compile=t.compile, offload=cfg.parallel.offload,
            replicate_only=replicate_only(cfg.sync_mode),
            mesh=self.mesh, sequence_parallel=cfg.parallel.sequence_parallel_on, tp_plan=cfg.model.tensor_parallel_plan,
        )
        self.optimizer = build_optimizer(self.par, cfg.optimizer, ctx.device)
        # How replicas stay in sync (sync.py); its state_dict() is part of the resume state.
        self.syncer = make_syncer(cfg.sync, self.par, ctx, self.precision, self.batch_plan.accum_steps)
        # dropout differs per data-parallel rank; the tp ranks of a group share it (replicated regions agree)
        torch.manual_seed(t.seed + 1 + self.dp_rank)

        self.loader = Loader(corpus, self.batch_plan, ctx.device)
        n_devices = ctx.world_size  # peak_flops: None on CPU unless $KUBETRAIN_PEAK_FLOPS declares one
        self.throughput = Throughput(
            cfg.global_batch_size * built.seq_len, built.flops_per_token,
            peak_flops(ctx.device, cfg.dtype), n_devices,
        )
        self.progress = Progress(t.max_steps, ctx.world_size, trainingjob=cfg.name,
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
        self.keep_history = keep_history  # every step record in memory (tests, benchmarks)
        self.history: list[dict[str, Any]] = []
        self.last_record: dict[str, Any] | None = None
        self._last_sync: float | None = None
        self._steady = [0, 0.0]  # steps after the first of this fit(), their summed step time
        if ctx.is_main:
            dp = self.dp_size  # == world without tensor parallelism
            log.info(
                "model %.2fM params, strategy %s, %s, world %d (data-parallel %d x tensor-parallel %d), "
                "global batch %d = %d x micro %d x accum %d",
                built.n_params / 1e6, cfg.strategy, cfg.dtype, ctx.world_size, dp, tp,
                cfg.global_batch_size, dp, self.batch_plan.micro_batch, self.batch_plan.accum_steps,
            )
            if not self.batch_plan.even:
                log.info(
                    "uneven split: %d samples per data-parallel rank on ranks < %d, %d on the others; "
                    "micro-batches of at most %d weighted by samples x %d / %d (padded micro-steps weigh 0)",
                    -(-cfg.global_batch_size // dp), cfg.global_batch_size % dp or dp,
                    cfg.global_batch_size // dp, self.batch_plan.micro_batch, dp, cfg.global_batch_size,
                )

    # ------------------------------------------------------------------ one step

    def _forward_backward(self, batch: list[tuple[torch.Tensor, torch.Tensor]], scale: float) -> torch.Tensor:
        """Backward of every micro-batch, weighted by (its samples) x W / G; returns this rank's
        weighted loss sum (x W / G), whose sum over ranks / W is the global-batch mean.

        Every rank runs ``accum_steps`` micro-steps (padded ones with weight 0), so each backward's
        collectives and the grad-sync-on-the-last-micro-step choice are the same on all ranks."""
        plan = self.batch_plan
        accum = len(batch)
        loss_acc = torch.zeros((), device=self.ctx.device)
        for m, (x, y) in enumerate(batch):
            with self.par.loss_context():  # loss_parallel (tensor parallelism) spans forward and backward
                with self.par.grad_sync(m == accum - 1), self.precision.autocast():
                    loss = self.built.loss_fn(self.par.module(x), y)
                if self.faults.nan_loss(self.step + 1, self.ctx.rank):
                    loss = loss * float("nan")
                if plan.even:  # today's arithmetic, bit for bit (weight == 1 / accum)
                    loss_acc += loss.detach().float()
                    (loss * (scale / accum)).backward()
                    continue
                weight = plan.micro_weight(m)
                if weight:
                    loss_acc += loss.detach().float() * weight
                (loss * (scale * weight)).backward()  # weight 0: a padded micro-step, only for the collectives
        self.par.finish_grad_sync()
        return loss_acc / accum if plan.even else loss_acc

    def _set_schedule_lr(self) -> float:
        k = self.applied_steps
        lr = self.schedule.lr_at(k)
        set_lr(self.optimizer, lr)
        betas_at = getattr(self.schedule, "betas_at", None)
        betas = betas_at(k) if callable(betas_at) else None
        if betas is not None:
            for g in self.optimizer.param_groups:
                if "betas" in g:
                    g["betas"] = tuple(betas)
                elif "momentum" in g:
                    g["momentum"] = betas[0]
        return lr

    def train_step(self) -> dict[str, Any]:
        t0 = monotonic()
        batch = self.loader.step_batch(self.step)
        data_time = monotonic() - t0
        self.syncer.before_step()
        self.par.module.train()
        scaler = self.precision.scaler
        scale = float(scaler.scale)
        local_loss = self._forward_backward(batch, scale)
        if self.faults.inf_grad(self.step + 1, self.ctx.rank):
            self.par.poison_grads_()
        norm = self.par.grad_norm()
        # One all-reduce and one host sync per step: [sum of rank losses, sum of (identical) norms].
        flags = [float(self.stop_signal)] + [source() for source in self.flag_sources]
        stats = torch.cat([torch.stack([local_loss, norm.float()]), torch.tensor(flags, device=local_loss.device)])
        if self.ctx.world_size > 1:
            dist.all_reduce(stats)
        loss_sum, norm_sum, stop_sum, *self.flag_sums = stats.tolist()
        if stop_sum > 0:
            self.stop_requested = True
        now = monotonic()
        step_time = now - (self._last_sync if self._last_sync is not None else t0)
        self._last_sync = now
        loss = loss_sum / self.ctx.world_size
        grad_norm = norm_sum / self.ctx.world_size / scale
        loss_ok, grad_ok = math.isfinite(loss), math.isfinite(grad_norm)
        lr = self._set_schedule_lr()
        try:
            skip = scaler.update(not (loss_ok and grad_ok))
        except LossScaleAtMinimumError as e:
            raise DivergedError(str(e)) from None
        self._check_non_finite(loss_ok, grad_ok)
        if not skip:
            coef = 1.0 / scale
            clip = self.cfg.gradient_clipping
            if clip > 0 and grad_norm > clip:
                coef *= clip / (grad_norm + 1e-6)
            if coef != 1.0:
                self.par.scale_grads_(torch.tensor(coef, device=self.ctx.device))
            self.optimizer.step()
            self.applied_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        comm_bytes = self.syncer.after_step(self.step, bool(skip))
        tps, mfu = self.throughput.measure(step_time)
        return {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "loss_scale": scale,
            "skipped": bool(skip),
            "skipped_steps": int(scaler.skipped_steps),
            "tokens_per_s": tps,
            "mfu": mfu,
            "step_time": step_time,
            "data_time": data_time,
            "peak_mem": peak_memory_bytes(self.ctx.device),
            "world_size": self.ctx.world_size,
            "comm_bytes": comm_bytes,
        }

    def _check_non_finite(self, loss_ok: bool, grad_ok: bool) -> None:
        """Non-finite loss (any dtype) or non-finite gradients outside fp16 (where the loss scaler owns
        overflows): skip the step; fail after ``maxConsecutiveNonFinite`` such steps in a row."""
        bad = not loss_ok or (not grad_ok and not self.precision.uses_loss_scaling)
        self.consecutive_non_finite = self.consecutive_non_finite + 1 if bad else 0
        limit = self.cfg.precision.max_consecutive_non_finite
        if bad and limit and self.consecutive_non_finite >= limit:
            what = "loss" if not loss_ok else "gradient norm"
            raise DivergedError(
                f"the {what} was not finite for {self.consecutive_non_finite} consecutive steps "
                f"(through step {self.step + 1}; precision.maxConsecutiveNonFinite={limit}): the run has "
                "diverged. Lower the learning rate, enable gradient clipping, or use bf16."
            )

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float:
        self.par.module.eval()
        # evalBatches global batches, split like training: every rank runs the same number of
        # forwards (FSDP all-gathers in each), the padded ones weighted 0; a sample-weighted mean.
        plan = self.batch_plan
        n = self.cfg.training.eval_batches * plan.accum_steps
        total = torch.zeros((), device=self.ctx.device)
        for i in range(n):
            x, y = self.loader.eval_batch(i)
            with self.par.loss_context(), self.precision.autocast():
                loss = self.built.loss_fn(self.par.module(x), y).float()
            count = plan.micro_count(i % plan.accum_steps)
            if count:
                total += loss * count
        if self.ctx.world_size > 1:
            dist.all_reduce(total)
        # every tp rank of a group holds its group's (identical) loss: count each group once
        tp = self.ctx.world_size // self.dp_size
        return float(total.item()) / (self.cfg.training.eval_batches * plan.global_batch * tp)

    # ------------------------------------------------------------------ loop

    def _record(self, rec: dict[str, Any]) -> None:
        if self.keep_history:
            self.history.append(rec)
        if self.last_record is not None:  # the first step of a fit() includes warm-up: leave it out
            self._steady[0] += 1
            self._steady[1] += rec["step_time"]
        self.last_record = rec
        last = rec["step"] >= self.cfg.training.max_steps
        if rec["step"] % self.cfg.training.log_every == 0 or last or "eval_loss" in rec:
            if self.log is not None:
                self.log.write({**rec, "time": now_rfc3339()})
            if self.ctx.is_local_main:
                self.progress.update(rec)
        for cb in self.callbacks:
            cb(self, rec)

    def fit(self) -> Summary:
        t = self.cfg.training
        start = monotonic()
        eval_loss: float | None = None
        while self.step < t.max_steps and not self.stop_requested:
            rec = self.train_step()
            if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.max_steps):
                eval_loss = self.evaluate()
                self.schedule.observe(eval_loss)
                rec["eval_loss"] = eval_loss
            self._record(rec)
        wall = monotonic() - start
        n, total = self._steady
        tps, mfu = self.throughput.measure(total / n) if n else (None, None)
        last = self.last_record
        return Summary(
            steps=self.step,
            applied_steps=self.applied_steps,
            skipped_steps=int(self.precision.scaler.skipped_steps),
            final_loss=last["loss"] if last else None,
            eval_loss=eval_loss,
            tokens_per_s=tps,
            mfu=mfu,
            wall_time_s=wall,
            world_size=self.ctx.world_size,
            history=self.history,
        )

    # ------------------------------------------------------------------ checkpoint hooks

    def trainer_state(self) -> dict[str, Any]:
        """Everything besides model/optimizer tensors needed to resume exactly (plain Python)."""
        return {
            "step": self.step,
            "applied_steps": self.applied_steps,
            "consumed_samples": self.step * self.cfg.global_batch_size,
            "consecutive_non_finite": self.consecutive_non_finite,
            "scaler": self.precision.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        g = self.cfg.global_batch_size
        if state["consumed_samples"] % g:
            raise SpecError(
                f"cannot resume: {state['consumed_samples']} samples consumed is not a multiple of "
                f"globalBatchSize {g} (globalBatchSize must not change across a resume)"
            )
        self.step = state["consumed_samples"] // g
        self.applied_steps = int(state["applied_steps"])
        self.consecutive_non_finite = int(state.get("consecutive_non_finite", 0))
        self.precision.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])

    def checkpoint_committed(self, step: int, seconds: float | None = None) -> None:
        self.last_checkpoint_step = step
        self.progress.checkpoint_committed(step)

    def close(self) -> None:
        self.loader.close()
        if self.server is not None:
            self.server.close()
        if self.log is not None:
            self.log.close()
