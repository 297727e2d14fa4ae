"""Pipeline bubble: the idle fraction of each pipeline rank per step, measured from timestamps, beside
the schedule's theory (`kubetrain.api.pipeline_schedules.bubble_fraction`). Context, not a test.

    python bench/pipeline_bubble.py                                 # pp2, 8 micro-batches, every schedule
    python bench/pipeline_bubble.py --pp 4 --micro-batches 8        # 4 ranks (oversubscribes 2 cores)
    python bench/pipeline_bubble.py --device cuda --pp 4 --d-model 2048 --layers 16 --seq-len 1024

Each rank wraps its stages' compute actions (``PipelineStage.forward_one_chunk``,
``backward_one_chunk``, ``backward_weight_one_chunk``) with ``perf_counter`` (``cuda.synchronize``
on GPUs) and the schedule's ``step``: idle = 1 - (compute time) / (the step's span on that rank),
the median over the measured steps. The theory assumes equal stages and the backward costing twice
the forward; a real step also pays send/recv and the optimizer, which the span here excludes (only
the schedule's step is timed), and the first and last stage carry the embeddings and the head.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]

from benchlib import run_ranks  # noqa: E402

SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZeroBubble")


def _spec(args: argparse.Namespace, schedule: str) -> dict[str, Any]:
    return {
        "workers": {"procsPerWorker": args.pp},
        "model": {"nLayers": args.layers, "dModel": args.d_model, "nHeads": max(1, args.d_model // 64),
                  "vocabSize": 256, "seqLen": args.seq_len, "tieEmbeddings": False},
        "training": {"maxSteps": args.steps, "globalBatchSize": args.micro_batches * args.micro_batch,
                     "microBatchSize": args.micro_batch, "gradientClipping": 0},
        "optimizer": {"type": "SGD", "lr": 1e-3},
        "parallelism": {"strategy": "ddp", "pipelineParallel": args.pp, "pipelineSchedule": schedule},
    }


def _instrument(pipe: Any, sync: Any) -> list[float]:
    """Time the stages' compute actions and the schedule's step; returns the list each step's idle
    fraction (1 - compute / span) is appended to."""
    busy = [0.0]
    idle: list[float] = []

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                busy[0] += time.perf_counter() - t0
        return wrapper

    for st in pipe.pp_stages:
        for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
            setattr(st, name, timed(getattr(st, name)))
    step = pipe.schedule.step

    def timed_step(*a: Any, **kw: Any) -> Any:
        busy[0] = 0.0
        sync()
        t0 = time.perf_counter()
        result = step(*a, **kw)
        sync()
        idle.append(1 - busy[0] / (time.perf_counter() - t0))
        return result

    pipe.schedule.step = timed_step
    return idle


def rank_side(args: argparse.Namespace) -> None:
    import torch

    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.engine import Trainer

    if args.device == "cpu":
        torch.set_num_threads(1)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    ctx = distributed.init(None, 600)
    out = []
    for schedule in args.schedules.split(","):
        trainer = Trainer(config.from_spec(_spec(args, schedule), world_size=ctx.world_size), ctx, None)
        pipe = trainer.pipeline
        assert pipe is not None
        idle = _instrument(pipe, sync)
        try:
            trainer.fit()
        finally:
            trainer.close()
        out.append({"schedule": schedule, "idle": statistics.median(idle[args.warmup:] or idle),
                    "stages": pipe.stage_ids, "microbatches": pipe.n_microbatches})
    Path(f"{args.out}.{ctx.rank}").write_text(json.dumps(out))
    distributed.shutdown()



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--micro-batches", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rank-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_side:
        rank_side(args)
        return
    from kubetrain.api.pipeline_schedules import bubble_fraction

    out = f"/tmp/kubetrain-bench-pp-{os.getpid()}.json"
    argv = [sys.executable, __file__, "--rank-side", "--out", out, *sys.argv[1:]]
    run_ranks(argv, args.pp, args.device)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(args.pp)]
    for r in range(args.pp):
        Path(f"{out}.{r}").unlink()
    print(f"pipeline bubble: pp {args.pp}, {args.micro_batches} micro-batches of {args.micro_batch} x "
          f"{args.seq_len} tokens, GPT {args.layers} layers d{args.d_model}, {args.device}")
    print(f"  {'schedule':<16}{'theory':>8}  measured idle per pp rank")
    for i, schedule in enumerate(args.schedules.split(",")):
        theory = bubble_fraction(schedule, args.pp, args.micro_batches)
        measured = "  ".join(f"r{r}: {ranks[r][i]['idle']:.1%}" for r in range(args.pp))
        mean = statistics.mean(ranks[r][i]["idle"] for r in range(args.pp))
        print(f"  {schedule:<16}{theory:>8.1%}  {measured}  (mean {mean:.1%}, x{mean / theory:.2f} of theory)")


if __name__ == "__main__":
    main()
