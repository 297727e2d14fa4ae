"""`kubetrain plot RUN_DIR [--out PNG]`: loss, learning rate and throughput of a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (has metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from kubetrain.tools.localrun import read_history
    from kubetrain.tools.plotting import plot_run

    history = read_history(args.run_dir)
    if not history:
        print(f"error: no training steps in {args.run_dir / 'metrics.jsonl'}", file=sys.stderr)
        return 1
    out = args.out or args.run_dir / "curves.png"
    try:
        plot_run(history, out, title=args.run_dir.name)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
