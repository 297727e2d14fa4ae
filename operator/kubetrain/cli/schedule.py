"""`kubetrain schedule FILE [--steps N] [--json] [--png OUT]`: the learning rate of every
optimizer step 0 .. N-1, as the trainer will use it.

The file is validated first (problems -> printed, exit 1). The spec is then resolved
(`spec.deepspeed` mapped onto the typed fields), and the schedule is built by
`kubetrain.api.schedules` -- the very code the trainer runs -- with the resolved optimizer lr
as its base lr. Step k is the k-th applied optimizer step (DESIGN.md's step convention).
"""

from __future__ import annotations

import argparse
import json
import sys

from kubetrain import api
from kubetrain.api.deepspeed import analyse
from kubetrain.api.schedules import lr_sequence, make_schedule
from kubetrain.api.specfile import SpecFileError, load_one
from kubetrain.api.validate import validate_object


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a TrainingJob YAML/JSON file ('-' = stdin)")
    parser.add_argument("--steps", type=_positive, metavar="N",
                        help="number of optimizer steps to show (default: spec.training.maxSteps)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of numbers, one per step")
    parser.add_argument("--png", metavar="OUT", help="also plot the schedule into this PNG file (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    try:
        doc = load_one(args.file)
    except SpecFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = validate_object(doc)
    if problems:
        for p in problems:
            print(f"{args.file}: {p}")
        return 1
    spec = api.TrainingJob.model_validate(doc).spec
    res = analyse(spec)
    resolved = res.spec
    type_ = resolved.lr_schedule.type or "Constant"
    base_lr = float(resolved.optimizer.lr or 0.0)
    schedule = make_schedule(type_, resolved.lr_schedule.params, base_lr=base_lr)
    steps = args.steps if args.steps is not None else resolved.training.max_steps
    lrs = lr_sequence(schedule, steps)
    name = str((doc.get("metadata") or {}).get("name", "?"))

    if args.png:
        from kubetrain.tools.plotting import plot_lr

        try:
            plot_lr(lrs, args.png, f"{name}: {type_} (base lr {base_lr:g})")
        except (ImportError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.png}", file=sys.stderr)

    if args.json:
        print(json.dumps(lrs))
        return 0
    print(_table(lrs, name, type_, base_lr, res.notes))
    return 0


def _table(lrs: list[float], name: str, type_: str, base_lr: float, notes: list[str]) -> str:
    """Two aligned columns, every step on its own line, lrs to 8 significant digits
    (`--json` gives the exact values)."""
    width = max(4, len(str(len(lrs) - 1)))
    lines = [f"# TrainingJob {name}: {type_}, optimizer lr {base_lr!r}, steps 0..{len(lrs) - 1}"]
    if type_ == "ReduceLROnPlateau":
        lines.append("# ReduceLROnPlateau lowers the lr when the evaluation loss stalls; shown without evaluations")
    lines += [f"# note: {n}" for n in notes]
    lines.append(f"{'step':>{width}}  lr")
    lines += [f"{k:>{width}}  {lr:.8g}" for k, lr in enumerate(lrs)]
    peak = max(range(len(lrs)), key=lambda k: lrs[k])
    lines.append(f"# max {lrs[peak]:.8g} at step {peak}; last {lrs[-1]:.8g} at step {len(lrs) - 1}")
    return "\n".join(lines)
