"""`kubetrain prepare-data TEXT... --out DIR`: byte-level text -> token shards for `data.type: tokens`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="TEXT", help="text files or directories (*.txt, *.text, *.md)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for shard_*.bin + metadata.json")
    parser.add_argument("--token-dtype", choices=("uint16", "uint32"), default="uint16",
                        help="element type of the shards (set spec.data.tokenDtype to the same)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 27, help="tokens per shard file")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("numpy") is None:
        print("error: prepare-data needs numpy: pip install 'kubetrain[trainer]'", file=sys.stderr)
        return 2
    from kubetrain_trainer.data.files import prepare_data
    from kubetrain_trainer.errors import TrainerError

    try:
        meta = prepare_data(args.inputs, args.out, token_dtype=args.token_dtype, shard_tokens=args.shard_tokens)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(meta, indent=2))
    print(f"use it with: data: {{type: tokens, path: {args.out}, tokenDtype: {args.token_dtype}}}", file=sys.stderr)
    return 0
