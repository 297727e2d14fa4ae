"""`kubetrain crd`: print the generated CustomResourceDefinition."""

from __future__ import annotations

import argparse
import json
import sys

from kubetrain.api.crd import build_crd, crd_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(build_crd(), indent=2) + "\n" if args.json else crd_yaml())
    return 0
