"""Sync modes side by side: bytes communicated per step and loss after N steps, allreduce vs localSGD vs
DiLoCo vs PowerSGD, as ratios against allreduce measured in the same run.

    python bench/sync_modes.py                                   # tiny GPT, 2 gloo ranks, 60 steps
    python bench/sync_modes.py --world 4 --steps 200 --sync-every 20 --powersgd-ranks 1,4

Each mode trains the same model from the same seed on the same data (rank r of W reads its slice of
every global batch). ``comm_bytes`` is the trainer's own per-step figure (payload each rank hands to
the synchronising all-reduces); ``loss`` is the mean training loss of the last 5 steps; ``eval`` the
held-out loss at the end (DiLoCo/localSGD end on a sync step when N is a multiple of syncEvery, so
every rank evaluates the same model).  Step time on CPU/gloo says little about a real network.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]

from benchlib import run_ranks  # noqa: E402


def _modes(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    k = args.sync_every
    modes: list[tuple[str, dict[str, Any]]] = [
        ("allreduce", {"mode": "allreduce"}),
        (f"localSGD k={k}", {"mode": "localSGD", "localSGD": {"syncEvery": k}}),
        (
            f"diloco k={k}",
            {"mode": "diloco", "diloco": {"syncEvery": k, "outerLr": args.outer_lr, "outerMomentum": args.outer_momentum}},
        ),
    ]
    for r in args.powersgd_ranks:
        modes.append((f"powerSGD r={r}", {"mode": "powerSGD", "powerSGD": {"rank": r, "startStep": args.start_step}}))
    return modes


def _spec(args: argparse.Namespace, sync: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"preset": args.preset},
        "training": {
            "maxSteps": args.steps, "globalBatchSize": args.global_batch, "microBatchSize": args.micro_batch,
            "seed": args.seed, "evalBatches": 4,
        },
        "optimizer": {"type": "AdamW", "lr": args.lr},
        "parallelism": {"strategy": "ddp", "sync": sync},
    }


def rank_side(args: argparse.Namespace) -> None:
    import torch

    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.engine import Trainer

    torch.set_num_threads(1)
    ctx = distributed.init(None, 300)
    rows = []
    for label, sync in _modes(args):
        trainer = Trainer(config.from_spec(_spec(args, sync), world_size=ctx.world_size), ctx, None)
        try:
            hist = trainer.fit().history
            eval_loss = trainer.evaluate()
        finally:
            trainer.close()
        tail = hist[-5:]
        rows.append({
            "mode": label,
            "comm_bytes_per_step": sum(h["comm_bytes"] for h in hist) / len(hist),
            "loss": sum(h["loss"] for h in tail) / len(tail),
            "first_loss": hist[0]["loss"],
            "eval_loss": eval_loss,
            "step_time": sum(h["step_time"] for h in hist[1:]) / max(1, len(hist) - 1),
        })
    if ctx.is_main:
        Path(args.out).write_text(json.dumps(rows))
    distributed.shutdown()



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sync-every", type=int, default=10)
    p.add_argument("--outer-lr", type=float, default=0.7)
    p.add_argument("--outer-momentum", type=float, default=0.9)
    p.add_argument("--powersgd-ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--start-step", type=int, default=5)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rank-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_side:
        rank_side(args)
        return

    out = Path(f"/tmp/kubetrain-bench-sync-{os.getpid()}.json")
    argv = [sys.executable, __file__, "--rank-side", "--out", str(out), *sys.argv[1:]]
    run_ranks(argv, args.world, "cpu")
    rows = json.loads(out.read_text())
    out.unlink()
    ref = rows[0]
    print(f"\nGPT preset {args.preset}, {args.world} gloo ranks, {args.steps} steps, global batch "
          f"{args.global_batch}, AdamW lr {args.lr}; start loss {ref['first_loss']:.3f}")
    head = f"{'mode':<16}{'bytes/step':>12}{'x allreduce':>13}{'loss':>8}{'x allreduce':>13}{'eval':>8}{'x allreduce':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['mode']:<16}{r['comm_bytes_per_step']:>12.0f}{r['comm_bytes_per_step'] / ref['comm_bytes_per_step']:>13.4f}"
            f"{r['loss']:>8.3f}{r['loss'] / ref['loss']:>13.3f}{r['eval_loss']:>8.3f}{r['eval_loss'] / ref['eval_loss']:>13.3f}"
        )


if __name__ == "__main__":
    main()
