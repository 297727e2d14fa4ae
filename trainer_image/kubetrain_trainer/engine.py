"""The training loop: one optimizer step = exactly globalBatchSize samples, at any world size.

Step numbering: ``step`` counts iterations (each consumes a global batch, including skipped ones);
``applied_steps`` counts optimizer updates and indexes the lr schedule (``lr_at(applied_steps)``),
so overflow-skipped fp16 steps do not advance it (DESIGN.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from kubetrain.api.schedules import LRSchedule, ScheduleError, make_schedule
from kubetrain_trainer.loss_scale import LossScaleAtMinimumError

from . import fp8
from .config import JobConfig
from .data import Loader, make_plan, open_corpus
from .distributed import DistContext
from .errors import DivergedError, SpecError
from .faults import Faults
from .metrics import Throughput, monotonic, peak_flops, peak_memory_bytes
from .models import BuiltModel, build_model
from .optim import build_optimizer
from .parallel import Parallelized, check_combination, parallelize
from .pipeline_parallel import Pipeline
from .pipeline_parallel import make_mesh as make_pp_mesh
from .precision import make_plan as make_precision_plan
from .reporting import Reporter, Summary
from .stepping import NonFiniteGuard, apply_schedule, clip_coefficient
from .sync import make_syncer, replicate_only
from .tensor_parallel import make_mesh

log = logging.getLogger("kubetrain_trainer")

Callback = Callable[["Trainer", dict[str, Any]], None]

__all__ = ["Callback", "Summary", "Trainer"]


class Trainer:
    """Builds the job's pieces from the config (data, model, parallel wrapper, optimizer, syncer) and
    runs steps: ``train_step`` (one global batch), ``evaluate``, ``fit`` (the loop). The rules around a
    step live in ``stepping``, what a step leaves behind in ``reporting``."""

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
        self.guard = NonFiniteGuard(cfg.precision.max_consecutive_non_finite, self.precision.uses_loss_scaling)
        if cfg.dtype == "fp8":
            fp8.check_supported(ctx.device)
        check_combination(cfg.strategy, cfg.dtype)
        # Tensor parallelism: a (dp, tp) mesh; the batch is split over the dp ranks only (the tp ranks
        # of a group read the same samples), so every step still consumes exactly globalBatchSize.
        # Pipeline parallelism: a (pp, dp, tp) mesh (pipeline_parallel.py); the ranks of one pipeline
        # read the same samples, its micro-batches are the step's accumulation micro-batches.
        tp, pp = cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel
        self.pipeline: Pipeline | None = None
        self.mesh: DeviceMesh | None
        if pp > 1:
            self.mesh = make_pp_mesh(ctx.device.type, ctx.world_size, ctx.local_world_size, pp, tp)
            self.dp_size = ctx.world_size // (pp * tp)
            self.dp_rank = (ctx.rank // tp) % self.dp_size
        else:
            self.mesh = make_mesh(ctx.device.type, ctx.world_size, ctx.local_world_size, tp) if tp > 1 else None
            self.dp_size, self.dp_rank = ctx.world_size // tp, ctx.rank // tp
        micro = t.micro_batch_size
        if pp > 1 and micro is None:  # default: one micro-batch per stage (kubetrain.api.pipeline)
            micro = max(1, cfg.global_batch_size // (self.dp_size * pp))
        self.batch_plan = make_plan(cfg.global_batch_size, micro, self.dp_size, self.dp_rank)
        if pp > 1 and not self.batch_plan.even:
            raise SpecError(
                f"spec.training.globalBatchSize {cfg.global_batch_size} must be a multiple of data-parallel "
                f"{self.dp_size} x microBatchSize {self.batch_plan.micro_batch} with pipelineParallel > 1 (every "
                "micro-batch of a pipeline is equal): adjust globalBatchSize or microBatchSize"
            )
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
        if pp > 1:
            assert self.mesh is not None
            if replicate_only(cfg.sync_mode):
                raise SpecError(f"spec.parallelism.sync.mode {cfg.sync_mode} with pipelineParallel > 1 is not "
                                "supported: use allreduce")
            self.pipeline = Pipeline(built, cfg, self.precision, ctx, self.mesh,
                                     n_microbatches=self.batch_plan.accum_steps)
            self.par: Parallelized = self.pipeline.par
        else:
            self.par = parallelize(
                built, cfg.strategy, self.precision, ctx,
                activation_checkpointing=t.activation_checkpointing, compile=t.compile, offload=cfg.parallel.offload,
                replicate_only=replicate_only(cfg.sync_mode), mesh=self.mesh,
                sequence_parallel=cfg.parallel.sequence_parallel_on, tp_plan=cfg.model.tensor_parallel_plan,
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
        self.reporter = Reporter(cfg, ctx, run_dir, metrics_port=metrics_port, throughput=self.throughput,
                                 keep_history=keep_history)
        self._last_sync: float | None = None
        if ctx.is_main:
            self._log_start(built)

    def _log_start(self, built: BuiltModel) -> None:
        """What this run is: model, strategy, precision, world and batch arithmetic."""
        cfg, plan = self.cfg, self.batch_plan
        dp, tp, g = self.dp_size, cfg.parallel.tensor_parallel, cfg.global_batch_size  # dp == world without tp
        pp = cfg.parallel.pipeline_parallel
        mesh = f"pipeline-parallel {pp} x " if pp > 1 else ""
        log.info(
            "model %.2fM params, strategy %s, %s, world %d (%sdata-parallel %d x tensor-parallel %d), "
            "global batch %d = %d x micro %d x accum %d",
            built.n_params / 1e6, cfg.strategy, cfg.dtype, self.ctx.world_size, mesh, dp, tp,
            g, dp, plan.micro_batch, plan.accum_steps,
        )
        if self.pipeline is not None:
            p = self.pipeline
            log.info("pipeline: %d stages (%s, stages %s on this rank), %d micro-batches per step",
                     p.n, p.schedule_spec.name, p.stage_ids, p.n_microbatches)
        if not plan.even:
            log.info(
                "uneven split: %d samples per data-parallel rank on ranks < %d, %d on the others; "
                "micro-batches of at most %d weighted by samples x %d / %d (padded micro-steps weigh 0)",
                -(-g // dp), g % dp or dp, g // dp, plan.micro_batch, dp, g,
            )

    # ------------------------------------------------------------------ one step

    def _forward_backward(self, batch: list[tuple[torch.Tensor, torch.Tensor]], scale: float) -> torch.Tensor:
        """Backward of every micro-batch, weighted by (its samples) x W / G; returns this rank's
        weighted loss sum (x W / G), whose sum over ranks / W is the global-batch mean.

        Every rank runs ``accum_steps`` micro-steps (padded ones with weight 0), so each backward's
        collectives and the grad-sync-on-the-last-micro-step choice are the same on all ranks."""
        if self.pipeline is not None:
            return self.pipeline.forward_backward(batch, scale)
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
        lr = apply_schedule(self.optimizer, self.schedule, self.applied_steps)
        try:
            skip = scaler.update(not (loss_ok and grad_ok))
        except LossScaleAtMinimumError as e:
            raise DivergedError(str(e)) from None
        self.guard.check(loss_ok, grad_ok, self.step + 1)
        if not skip:
            coef = clip_coefficient(scale, grad_norm, self.cfg.gradient_clipping)
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

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float:
        self.par.module.eval()
        # evalBatches global batches, split like training: every rank runs the same number of
        # forwards (FSDP all-gathers in each), the padded ones weighted 0; a sample-weighted mean.
        plan = self.batch_plan
        if self.pipeline is not None:
            return self._evaluate_pipeline()
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

    def _evaluate_pipeline(self) -> float:
        """Forward-only through the pipeline; the last stage's losses, sample-weighted, over all ranks."""
        assert self.pipeline is not None
        plan, accum = self.batch_plan, self.batch_plan.accum_steps
        total = torch.zeros((), device=self.ctx.device)
        for b in range(self.cfg.training.eval_batches):
            batch = [self.loader.eval_batch(b * accum + m) for m in range(accum)]
            for m, loss in enumerate(self.pipeline.eval_losses(batch)):
                total += loss * plan.micro_count(m)
        if self.ctx.world_size > 1:
            dist.all_reduce(total)
        # the last stage's dp x tp ranks hold the losses: each tp group's once
        return float(total.item()) / (self.cfg.training.eval_batches * plan.global_batch * self.pipeline.tp)

    # ------------------------------------------------------------------ loop

    def _record(self, rec: dict[str, Any]) -> None:
        self.reporter.record(rec)
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
        return self.reporter.summary(
            steps=self.step, applied_steps=self.applied_steps,
            skipped_steps=int(self.precision.scaler.skipped_steps), eval_loss=eval_loss,
            wall_time_s=monotonic() - start,
        )

    # ------------------------------------------------------------------ checkpoint hooks

    def trainer_state(self) -> dict[str, Any]:
        """Everything besides model/optimizer tensors needed to resume exactly (plain Python)."""
        return {
            "step": self.step,
            "applied_steps": self.applied_steps,
            "consumed_samples": self.step * self.cfg.global_batch_size,
            "consecutive_non_finite": self.guard.consecutive,
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
        self.guard.consecutive = int(state.get("consecutive_non_finite", 0))
        self.precision.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])

    def checkpoint_committed(self, step: int, seconds: float | None = None) -> None:
        self.last_checkpoint_step = step
        self.reporter.checkpoint_committed(step, seconds)

    def close(self) -> None:
        self.loader.close()
        self.reporter.close()
