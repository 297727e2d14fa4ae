"""`kubetrain checkpoint verify DIR`: check a run's checkpoints offline against their manifests.

DIR is a run directory, its `checkpoints/` directory or one checkpoint. Every file of every
checkpoint is read once and its size and checksum compared with the manifest written when it was
saved. Prints one line per checkpoint (good or what is wrong, by file name); exit 0 when every
checkpoint is good, 1 when any is damaged, 2 when there is none or DIR cannot be read. Needs no
torch (the verifier lives in the trainer package but imports only the standard library and xxhash).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = sub.add_parser("verify", help="verify checkpoints against their manifests (sizes and checksums)")
    verify.add_argument("dir", metavar="DIR", type=Path, help="run directory, checkpoints directory or one checkpoint")
    verify.add_argument("--json", action="store_true", help="one JSON object per checkpoint")


def run(args: argparse.Namespace) -> int:
    from kubetrain_trainer.checkpoint.verify import verify_path

    try:
        verdicts = verify_path(args.dir)
    except (OSError, RuntimeError) as exc:
        print(f"error: cannot verify {args.dir}: {exc}", file=sys.stderr)
        return 2
    if not verdicts:
        print(f"{args.dir}: no checkpoints", file=sys.stderr)
        return 2
    for v in verdicts:
        if args.json:
            print(json.dumps({"path": str(v.path), "good": v.problem is None, "problem": v.problem,
                              "latest": v.latest, "bytes": v.bytes}))
        else:
            tag = " (latest)" if v.latest else ""
            print(f"{v.path}{tag}: " + ("good" if v.problem is None else f"DAMAGED: {v.problem}")
                  + f" [{v.bytes / 1e6:.1f} MB]")
    good = [v for v in verdicts if v.problem is None]
    if not args.json:
        print(f"{len(good)} of {len(verdicts)} checkpoint(s) good"
              + (f"; newest good: {good[0].path.name}" if good else "; none can be resumed from"))
    return 0 if len(good) == len(verdicts) else 1
