"""`kubetrain export CKPT --format safetensors [--dtype fp32|bf16|int8] [-o DIR]`: consolidated model
weights from a checkpoint (any world size, any strategy), usable without Kubetrain."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CKPT",
                        help="a checkpoint directory (step-N), a checkpoints directory or a run directory "
                        "(their latest complete checkpoint)")
    parser.add_argument("--format", default="safetensors", choices=["safetensors"], help="output format")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="fp32 (as trained), bf16, or int8 (symmetric per-output-channel weight "
                        "quantization, float32 scales stored as <name>_scale)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output directory (default: ./<job>-step-<N>-<dtype>)")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        print("error: kubetrain export reads checkpoints with PyTorch: pip install 'kubetrain[trainer]'",
              file=sys.stderr)
        return 2
    from kubetrain_trainer import checkpoint as ck
    from kubetrain_trainer.export import export

    try:
        path = ck.resolve(args.checkpoint)
        meta = ck.read_meta(path)
        out = args.output or Path(f"{meta.get('job') or 'model'}-step-{meta['step']}-{args.dtype}")
        config = export(path, out, dtype=args.dtype, fmt=args.format)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = (out / "model.safetensors").stat().st_size
    print(f"{out / 'model.safetensors'}: {config['parameters']:,} parameters, {args.dtype}, "
          f"{size / 1e6:.1f} MB, from {path} (step {config['step']})")
    print(f"{out / 'config.json'}")
    return 0
