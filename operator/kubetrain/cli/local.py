"""`kubetrain local FILE`: the same TrainingJob trained on this machine."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetrain.api import TrainingJob
    from kubetrain.tools.localrun import LocalOptions
    from kubetrain_trainer.runlock import RunLock

from kubetrain.api.constants import EXIT_INVALID_SPEC, EXIT_RETRYABLE
from kubetrain.api.specfile import SpecFileError, load_one
from kubetrain.api.validate import validate_object


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="TrainingJob YAML/JSON")
    parser.add_argument("--workers", type=int, default=1,
                        help="simulated worker pods (default 1; rendezvous on loopback)")
    parser.add_argument("--procs-per-worker", type=int, default=None,
                        help="training processes per worker (default: spec.workers.procsPerWorker, "
                        "or the GPUs it asks for)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="metrics log, checkpoints and logs (default: ./runs/NAME); "
                        "running again with the same directory resumes")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _lock_run_dir(opts: LocalOptions) -> RunLock | None:
    """Hold the run directory for this run (and its launchers), or say who holds it.  Our
    launchers die with us (PR_SET_PDEATHSIG, SIGTERM: they stop after a checkpoint)."""
    from kubetrain_trainer import lifeline
    from kubetrain_trainer.runlock import RunDirBusy, acquire

    me = os.getpid()
    opts.lock_id = f"local-{socket.gethostname()}-{me}-{time.time_ns()}"
    opts.preexec = functools.partial(lifeline.die_with_parent, me, signal.SIGTERM)
    try:
        return acquire(opts.run_dir, opts.lock_id)
    except RunDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot use the run directory {opts.run_dir}: {exc}", file=sys.stderr)
    return None


def _refusal(job: TrainingJob, opts: LocalOptions, *, explicit_run_dir: bool) -> str | None:
    """A permanent reason not to start: the default run directory escaping ./runs (validation
    makes the name a DNS label, so this is a second line of defence), or a CPU job that cannot
    fit in this machine's memory (the planner's numbers)."""
    from kubetrain.tools.memfit import available_memory_bytes, cpu_fit_problem

    runs = Path("runs").resolve()
    if not explicit_run_dir and not opts.run_dir.resolve().is_relative_to(runs):
        return f"metadata.name: the run directory {opts.run_dir} is outside ./runs; fix: rename the job"
    if job.spec.workers.gpus_per_worker == 0:
        return cpu_fit_problem(job.spec, opts.workers * opts.procs_per_worker, available_memory_bytes())
    return None


def run(args: argparse.Namespace) -> int:
    try:
        obj = load_one(args.file)
    except SpecFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    problems = validate_object(obj)
    if problems:
        for p in problems:
            print(f"{args.file}: {p}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    if args.workers < 1 or (args.procs_per_worker is not None and args.procs_per_worker < 1):
        print("error: --workers and --procs-per-worker must be >= 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("torch") is None:
        print("error: kubetrain local trains with PyTorch: pip install 'kubetrain[trainer]'", file=sys.stderr)
        return 2

    from kubetrain.api import TrainingJob
    from kubetrain.tools.localrun import LocalOptions, LocalRun, summary_lines

    job = TrainingJob.model_validate(obj)
    name = str(job.metadata.get("name") or Path(args.file).stem)
    opts = LocalOptions(
        spec_path=Path(args.file),
        workers=args.workers,
        procs_per_worker=args.procs_per_worker or job.spec.workers.procs,
        run_dir=args.run_dir or Path("runs") / name,
    )
    opts.quiet = args.quiet
    refusal = _refusal(job, opts, explicit_run_dir=args.run_dir is not None)
    if refusal:  # before any process starts or any directory is made
        print(f"{args.file}: {refusal}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    lock = _lock_run_dir(opts)
    if lock is None:
        return EXIT_RETRYABLE
    resuming = (opts.run_dir / "checkpoints").exists()
    print(f"kubetrain local: {name}: {opts.workers} worker(s) x {opts.procs_per_worker} process(es), "
          f"{job.spec.training.max_steps} steps, run directory {opts.run_dir}"
          + (" (resuming)" if resuming else ""), file=sys.stderr)
    started = time.monotonic()
    local = LocalRun(job, opts)
    local.start()
    code = local.wait()
    wall = time.monotonic() - started
    if code == 0:
        print("done.", file=sys.stderr)
    elif code == 130:
        print("stopped after a checkpoint; run the same command to resume.", file=sys.stderr)
    else:
        for message in local.termination_messages():
            print(message, file=sys.stderr)
        print(f"failed (exit {code}); last lines of {opts.run_dir / 'logs' / 'worker-0.log'}:", file=sys.stderr)
        print(local.log_tail(), file=sys.stderr)
    for line in summary_lines(opts.run_dir, wall, local.progress):
        print(line)
    return code
