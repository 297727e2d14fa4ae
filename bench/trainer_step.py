"""Trainer step time vs a bare PyTorch loop on the same model (DESIGN.md target: ratio <= 1.03).

    python bench/trainer_step.py                          # tiny GPT on CPU (smoke)
    python bench/trainer_step.py --preset 124M --dtype bf16 --global-batch 32 --micro-batch 16  # a GPU

One process (a 1-process group).  The bare loop: the same GPT and optimizer (same fused/foreach
choice), the same autocast, pre-built batches already on the device, forward + backward per micro
batch, clip_grad_norm_, optimizer step, zero_grad — nothing else.  The trainer adds its data pipeline, grad-norm,
overflow/non-finite check (one host sync), clipping and logging bookkeeping.  Prints both medians
and the ratio.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kubetrain_trainer import config, distributed  # noqa: E402
from kubetrain_trainer.engine import Trainer  # noqa: E402
from kubetrain_trainer.models import build_model  # noqa: E402
from kubetrain_trainer.optim import build_optimizer  # noqa: E402
from kubetrain_trainer.parallel import Parallelized  # noqa: E402
from kubetrain_trainer.precision import make_plan  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(cfg: config.JobConfig, device: torch.device, steps: int, warmup: int) -> list[float]:
    torch.manual_seed(cfg.training.seed)
    with torch.device(device):
        built = build_model(cfg.model)
    par = Parallelized(built.module, built.module, "ddp", list(dict.fromkeys(built.module.parameters())))
    opt = build_optimizer(par, cfg.optimizer, device)
    plan = make_plan(cfg.precision, "ddp", device)
    g = cfg.global_batch_size
    micro = cfg.training.micro_batch_size or g
    data = torch.randint(0, cfg.shape.vocab_size, (g // micro, micro, cfg.shape.seq_len + 1), device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        for m in range(g // micro):
            with plan.autocast():
                logits = built.module(data[m, :, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), data[m, :, 1:].flatten())
            (loss / (g // micro)).backward()
        if cfg.gradient_clipping > 0:
            torch.nn.utils.clip_grad_norm_(par.params, cfg.gradient_clipping, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def trainer_loop(cfg: config.JobConfig, ctx: distributed.DistContext, steps: int, warmup: int) -> list[float]:
    trainer = Trainer(cfg, ctx, None)
    times = []
    try:
        for i in range(warmup + steps):
            _sync(ctx.device)
            t0 = time.perf_counter()
            trainer.train_step()
            _sync(ctx.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        trainer.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "zero1", "zero2", "zero3"])
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternate bare/trainer this many times")
    args = ap.parse_args()
    spec = {
        "model": {"preset": args.preset},
        "training": {"maxSteps": 10**9, "globalBatchSize": args.global_batch, "microBatchSize": args.micro_batch},
        "parallelism": {"strategy": args.strategy},
        "precision": {"dtype": args.dtype},
        "workers": {"gpusPerWorker": 1 if torch.cuda.is_available() else 0},
    }
    cfg = config.from_spec(spec)
    os.environ.setdefault("KUBETRAIN_METRICS_PORT", "0")
    ctx = distributed.init(cfg.gpus_requested, 600)
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(args.rounds):  # interleave so drift in machine load hits both equally
        bare += bare_loop(cfg, ctx.device, args.steps, args.warmup)
        ours += trainer_loop(cfg, ctx, args.steps, args.warmup)
    b, t = statistics.median(bare), statistics.median(ours)
    print(f"model {args.preset} {args.dtype} {args.strategy} on {ctx.device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"bare loop     median step {b * 1e3:9.2f} ms")
    print(f"trainer       median step {t * 1e3:9.2f} ms")
    print(f"ratio trainer/bare = {t / b:.3f}   (target <= 1.03)")
    distributed.shutdown()


if __name__ == "__main__":
    main()
