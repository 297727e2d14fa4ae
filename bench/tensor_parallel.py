"""Tensor parallelism: step time of tp=N vs tp=1 at the same world size (context, not a target).

    python bench/tensor_parallel.py                                  # 124M, 2 gloo ranks, seqLen 256
    python bench/tensor_parallel.py --preset tiny --steps 20         # quick
    python bench/tensor_parallel.py --device cuda --world 8 --tp 2 --dtype bf16 --seq-len 1024 \\
        --global-batch 64 --micro-batch 8                           # a GPU node (NCCL)

Both rows train the same model, data and global batch on ``--world`` processes: tp=1 is plain
data parallelism (``--strategy``, default zero3), tp=N splits every layer over N ranks (sequence
parallel on) and runs the strategy over world/N data-parallel ranks. Printed: median step time
after ``--warmup`` steps, tokens/s per device, and MFU where the device's peak is known; the ratio
is tp=N over tp=1. On CPU with gloo TP is communication-bound (4 collectives of the activations
per layer per micro batch, through the loopback), so expect a ratio well above 1 there; the case
for TP is memory (`kubetrain plan`) and, on NVLink, a layer too large for one device. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]

from benchlib import Row, print_table, run_ranks  # noqa: E402


def _spec(args: argparse.Namespace, tp: int) -> dict[str, Any]:
    par: dict[str, Any] = {"strategy": args.strategy}
    if tp > 1:
        par["tensorParallel"] = tp
    return {
        "workers": {"procsPerWorker": args.world},
        "model": {"preset": args.preset, "seqLen": args.seq_len},
        "training": {"maxSteps": args.steps, "globalBatchSize": args.global_batch, "microBatchSize": args.micro_batch},
        "precision": {"dtype": args.dtype},
        "optimizer": {"type": "AdamW", "lr": 3e-4},
        "parallelism": par,
    }


def rank_side(args: argparse.Namespace) -> None:
    import torch

    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.engine import Trainer

    if args.device == "cpu":
        torch.set_num_threads(1)
    ctx = distributed.init(None, 600)
    rows = []
    for tp in (1, args.tp):
        trainer = Trainer(config.from_spec(_spec(args, tp), world_size=ctx.world_size), ctx, None)
        try:
            hist = trainer.fit().history
        finally:
            trainer.close()
        steady = hist[args.warmup:] or hist[-1:]
        rows.append({
            "tp": tp,
            "step_time": statistics.median(h["step_time"] for h in steady),
            "tokens_per_s": statistics.median(h["tokens_per_s"] for h in steady if h["tokens_per_s"]),
            "mfu": steady[-1]["mfu"],
            "loss": hist[-1]["loss"],
            "peak_mem": max(h["peak_mem"] or 0 for h in hist),
        })
    if ctx.is_main:
        Path(args.out).write_text(json.dumps(rows))
    distributed.shutdown()



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--preset", default="124M")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--strategy", default="zero3", choices=("ddp", "zero2", "zero3"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rank-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_side:
        rank_side(args)
        return
    out = Path(f"/tmp/kubetrain-bench-tp-{os.getpid()}.json")
    argv = [sys.executable, __file__, "--rank-side", "--out", str(out), *sys.argv[1:]]
    run_ranks(argv, args.world, args.device)
    one, many = json.loads(out.read_text())
    out.unlink()
    rows = [
        Row(f"step time tp={args.tp} vs tp=1", many["step_time"], one["step_time"], "context", None, " s"),
        Row(f"tokens/s per device tp={args.tp} vs tp=1", many["tokens_per_s"] / args.world,
            one["tokens_per_s"] / args.world, "context", None),
    ]
    if many["peak_mem"] and one["peak_mem"]:
        rows.append(Row(f"peak device memory tp={args.tp} vs tp=1", many["peak_mem"] / 2**20, one["peak_mem"] / 2**20,
                        "context", None, " MiB"))
    notes = [f"GPT {args.preset}, seqLen {args.seq_len}, {args.world} {args.device} ranks, {args.strategy}, {args.dtype}, "
             f"global batch {args.global_batch} (micro {args.micro_batch}); final loss tp=1 {one['loss']:.4f}, "
             f"tp={args.tp} {many['loss']:.4f}"]
    if many["mfu"] is not None:
        notes.append(f"MFU tp=1 {one['mfu']:.1%}, tp={args.tp} {many['mfu']:.1%}")
    print_table("tensor parallelism: step time at equal world size", rows, notes)


if __name__ == "__main__":
    main()
