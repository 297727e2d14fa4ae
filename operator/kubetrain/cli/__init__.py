"""`kubetrain` command line. Each subcommand lives in its own module, imported only when
used, so the base install (no torch, no Kubernetes client) serves the offline tools."""

from __future__ import annotations

import argparse
import importlib
import sys

from kubetrain import __version__

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("kubetrain.cli.crd", "print the TrainingJob CustomResourceDefinition"),
    "validate": ("kubetrain.cli.validate", "validate TrainingJob files offline (models + CEL rules)"),
    "local": ("kubetrain.cli.local", "train a TrainingJob on this machine (the pods' launcher, loopback rendezvous)"),
    "plot": ("kubetrain.cli.plot", "plot loss, learning rate and throughput of a run directory"),
    "prepare-data": ("kubetrain.cli.prepare_data", "turn text files into token shards (byte-level) for data.type tokens"),
    "operator": ("kubetrain.cli.operator", "run the TrainingJob operator (kopf) in the foreground"),
    "plan": ("kubetrain.cli.plan", "estimate parameters, per-GPU memory, FLOPs and step time; suggest what fits"),
    "schedule": ("kubetrain.cli.schedule", "print the learning rate of every step as the trainer will use it"),
    "export": ("kubetrain.cli.export", "consolidate a checkpoint's weights into safetensors (fp32, bf16, int8)"),
    "checkpoint": ("kubetrain.cli.checkpoint", "verify a run's checkpoints offline (sizes and checksums)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported: `kubetrain crd` must not pay for
    (or need) torch or the Kubernetes client that other subcommands use."""
    parser = argparse.ArgumentParser(prog="kubetrain", description="Run large PyTorch training on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"kubetrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    try:
        return int(args._module.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
