"""`python -m kubetrain_trainer.launch`: the worker pod's process (and `kubetrain local`'s).

It runs torchrun's elastic agent in-process, owns the signals and turns what happened
into one of DESIGN.md's exit codes, with `{reason, message, step}` written to the
termination log:

    0  done                      64  invalid spec (permanent)
    75 preempted; the state is the last committed checkpoint (never counted as a failure)
    65 model or data error (permanent)          anything else: retryable failure

Why not plain torchrun: it maps every failure to 1, and when it restarts the worker group
(a node joined or left) it SIGTERMs the workers and SIGKILLs them 30 s later, whatever
they are doing; a checkpoint of a large model takes longer than that. Here the agent's
stop uses `checkpoint.saveTimeoutSeconds` (plus a margin) when the group is healthy
(a membership change: the workers agree on a stop step and checkpoint), and a short
timeout when the group already failed (a dead rank: nothing consistent to save).

Configuration is torchrun's environment contract (what the operator sets in pods):
PET_NNODES (n or min:max), PET_NPROC_PER_NODE, PET_RDZV_BACKEND, PET_RDZV_ENDPOINT,
PET_RDZV_ID, PET_MAX_RESTARTS, PET_RDZV_CONF (k=v,...), PET_MONITOR_INTERVAL,
PET_LOCAL_ADDR; plus KUBETRAIN_SPEC_FILE (or --spec) and KUBETRAIN_RUN_DIR.

Worker contract: workers get KUBETRAIN_LAUNCH_DIR, a node-local directory. A worker that
stopped on SIGTERM after a committed checkpoint writes `preempted-rank<R>.json`
({"step": N}) there and exits 75; a worker that fails writes `failure-rank<R>.json`
({reason, message, step}) and exits with its class (64, 65 or other); a worker that trained to
the end writes `finished-rank<R>.json` ({step, loss}: the pod's final record, whichever ranks
it hosts) and exits 0. Markers are cleared
whenever a worker group starts (a scale-up's exit 75 is not the job's outcome), and a group
that failed permanently (64/65) is not restarted: the same spec fails the same way again.
The rendezvous store is not shared with the workers (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1):
with sharing, a node joining a running job waits forever for the new round's MASTER_ADDR.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrain.api import constants as k
from kubetrain.api.constants import (
    EXIT_INVALID_SPEC,
    EXIT_MODEL_OR_DATA,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_RETRYABLE,
    PERMANENT_EXIT_CODES,
)

from .protocol import capped_json, reserve, termination_log_path, write_in_place
from .runlock import RunDirBusy, acquire

PERMANENT = tuple(sorted(PERMANENT_EXIT_CODES))
# A failed group has no consistent state to save: stop what is left quickly.
FAILED_GROUP_STOP_SECONDS = 5
# Margin on top of the save limit for the last step and process teardown.
STOP_MARGIN_SECONDS = 15
# `kubetrain local` died (SIGKILL, its terminal closed): the workers get this long to checkpoint
# and exit before they are killed — nobody is waiting, and a stray trainer must not live on.
ORPHAN_STOP_SECONDS = 3
# Node-local directories of launchers: kubetrain-launch-<random>/, flock'ed through OWNER_LOCK.
LAUNCH_DIR_PREFIX = "kubetrain-launch-"
OWNER_LOCK = "owner.lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("kubetrain.launch")


@dataclass
class Outcome:
    code: int
    reason: str
    message: str
    step: int | None = None
    loss: float | None = None


# ----------------------------------------------------------------------------- environment


def _nnodes(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition(":")
    return int(lo), int(hi or lo)


def _rdzv_conf(value: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        key, _, raw = item.partition("=")
        out[key.strip()] = raw.strip()
    return out


def _nproc(value: str) -> int:
    if value in ("gpu", "auto"):
        import torch

        return max(1, torch.cuda.device_count()) if value == "auto" else torch.cuda.device_count()
    return int(value)


def write_termination(outcome: Outcome, path: Path | None) -> None:
    """``{reason, message, step}`` (capped, one JSON line) over the blanks ``reserve`` put there at
    start-up: it lands even when the disk holding it filled up meanwhile.  Never fails the exit."""
    if path is None:
        return
    record: dict[str, Any] = {"reason": outcome.reason, "message": outcome.message, "step": outcome.step}
    if outcome.loss is not None:
        record["loss"] = outcome.loss
    write_in_place(path, capped_json(record))


# ----------------------------------------------------------------------- launch directories


def _sweep_launch_dirs(parent: Path) -> None:
    """Remove launch directories whose launcher is gone (killed before it could clean up): their
    owner lock is free.  Directories younger than a minute are left alone (being created)."""
    now = time.time()
    for path in parent.glob(f"{LAUNCH_DIR_PREFIX}*"):
        lock = path / OWNER_LOCK
        try:
            if now - path.stat().st_mtime < 60 or not lock.exists():
                continue
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def make_launch_dir() -> tuple[Path, int]:
    """A fresh node-local launch directory, flock'ed by this process (the fd holds it)."""
    parent = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        _sweep_launch_dirs(parent)
    path = Path(tempfile.mkdtemp(prefix=LAUNCH_DIR_PREFIX))
    fd = os.open(path / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def _run_dir_outcome(run_dir: Path, exc: OSError) -> Outcome:
    permanent = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)
    return Outcome(EXIT_MODEL_OR_DATA if permanent else EXIT_RETRYABLE, "RunDirUnusable",
                   f"cannot use the run directory {run_dir}: {exc.strerror or exc} (errno {exc.errno})")


# ----------------------------------------------------------------------------------- spec


def preflight(spec_path: str) -> tuple[dict[str, Any] | None, Outcome | None]:
    """Validate the spec before any rendezvous: a bad spec must never half-start a job."""
    from kubetrain.api.specfile import SpecFileError, load_one
    from kubetrain.api.validate import validate_object

    try:
        obj = load_one(spec_path)
    except SpecFileError as exc:
        return None, Outcome(EXIT_INVALID_SPEC, "InvalidSpec", str(exc))
    if isinstance(obj, dict) and "spec" not in obj and "kind" not in obj:
        obj = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
               "metadata": {"name": "job"}, "spec": obj}
    problems = validate_object(obj)
    if problems:
        return None, Outcome(EXIT_INVALID_SPEC, "InvalidSpec", "; ".join(str(p) for p in problems))
    return obj, None


# ------------------------------------------------------------------------------ the agent


class _AgentState:
    started_workers = False


def _clear_markers(launch_dir: Path) -> None:
    """A new worker group starts: what the previous one reported (a scale-up's preempted markers,
    a restarted group's failures) no longer describes the job."""
    for path in [p for kind in ("preempted", "failure", "finished") for p in launch_dir.glob(f"{kind}-rank*.json")]:
        path.unlink(missing_ok=True)


def _patch_agent(state: _AgentState) -> None:
    """Give the agent's worker-group stop the save limit instead of torch's fixed 30 s; start each
    worker group with no markers; never restart a group that failed permanently (64/65: the same
    spec, code and data fail the same way again)."""
    from torch.distributed.elastic.agent.server.api import WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    original_start = LocalElasticAgent._start_workers
    original_monitor = LocalElasticAgent._monitor_workers
    original_shutdown = LocalElasticAgent._shutdown

    def _shutdown(self: Any, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        if _orphaned():
            timeout = min(timeout, ORPHAN_STOP_SECONDS)
        original_shutdown(self, death_sig, timeout)

    def _stop_workers(self: Any, worker_group: Any) -> None:
        healthy = worker_group.state == WorkerState.HEALTHY  # a membership change, not a failure
        self._shutdown(timeout=self._shutdown_timeout if healthy else FAILED_GROUP_STOP_SECONDS)

    def _start_workers(self: Any, worker_group: Any) -> Any:
        state.started_workers = True
        launch_dir = os.environ.get(k.ENV_LAUNCH_DIR)
        if launch_dir:
            _clear_markers(Path(launch_dir))
        return original_start(self, worker_group)

    def _monitor_workers(self: Any, worker_group: Any) -> Any:
        _check_parent()
        result = original_monitor(self, worker_group)
        codes = sorted({int(f.exitcode) for f in (getattr(result, "failures", None) or {}).values()})
        permanent = [c for c in codes if c in PERMANENT]
        if permanent and self._remaining_restarts > 0:
            log.warning("a worker exited %d (permanent): not restarting the worker group", permanent[0])
            self._remaining_restarts = 0
        return result

    LocalElasticAgent._shutdown = _shutdown  # type: ignore[method-assign]
    LocalElasticAgent._stop_workers = _stop_workers  # type: ignore[method-assign]
    LocalElasticAgent._start_workers = _start_workers  # type: ignore[method-assign]
    LocalElasticAgent._monitor_workers = _monitor_workers  # type: ignore[method-assign]


def _orphaned() -> bool:
    """Started by ``kubetrain local`` (``$KUBETRAIN_LOCAL_PID``), which is gone."""
    expected = os.environ.get(k.ENV_LOCAL_PID)
    return bool(expected) and os.getppid() != int(expected or 0)


def _check_parent() -> None:
    """Under ``kubetrain local``: its death is a stop request (PR_SET_PDEATHSIG delivers SIGTERM;
    this check covers a signal lost to a race)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    if _orphaned():
        raise SignalException("kubetrain local is gone", sigval=signal.SIGTERM)


def _markers(launch_dir: Path, prefix: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(launch_dir.glob(f"{prefix}-rank*.json")):
        try:
            rec = json.loads(path.read_text())
            rec.setdefault("rank", int(path.stem.rsplit("rank", 1)[-1]))
            out.append(rec)
        except (OSError, ValueError):
            continue
    return out


def _preempted(launch_dir: Path) -> Outcome | None:
    marks = _markers(launch_dir, "preempted")
    if not marks:
        return None
    step = max(int(m.get("step") or 0) for m in marks)
    return Outcome(EXIT_PREEMPTED, "Preempted", f"stopped after a committed checkpoint at step {step}", step)


def classify_failure(exit_codes: dict[int, int], launch_dir: Path) -> Outcome:
    """The pod's exit code for failed workers: permanent classes win, else retryable."""
    records = {int(r["rank"]): r for r in _markers(launch_dir, "failure")}
    for wanted in PERMANENT:
        ranks = sorted(rank for rank, code in exit_codes.items() if code == wanted)
        if ranks:
            rec = records.get(ranks[0], {})
            reason = rec.get("reason") or ("InvalidSpec" if wanted == EXIT_INVALID_SPEC else "ModelOrDataError")
            return Outcome(wanted, reason, rec.get("message") or f"rank {ranks[0]} exited {wanted}", rec.get("step"))
    rank = min(exit_codes) if exit_codes else None
    rec = records.get(rank, {}) if rank is not None else {}
    code = exit_codes.get(rank, 1) if rank is not None else 1
    how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
    message = rec.get("message") or f"rank {rank} {how}"
    return Outcome(EXIT_RETRYABLE, rec.get("reason") or "WorkerFailed", message, rec.get("step"))


def run_agent(spec_path: str, run_dir: Path, launch_dir: Path, save_timeout: int,
              rendezvous_timeout: int) -> Outcome:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, launch_agent

    state = _AgentState()
    _patch_agent(state)
    # torch shares the rendezvous TCPStore with the workers by default, and then an agent that was
    # rank 0 before a membership change never republishes MASTER_ADDR for the new round: a node that
    # joins (scale-up) waits for it until the store times out (pytorch/pytorch#135712 is the same
    # sharing breaking restarts). Without sharing, every round publishes a fresh worker store.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    min_nodes, max_nodes = _nnodes(os.environ.get("PET_NNODES", "1"))
    rdzv_conf = {"join_timeout": rendezvous_timeout, **_rdzv_conf(os.environ.get("PET_RDZV_CONF", ""))}
    backend = os.environ.get("PET_RDZV_BACKEND", "c10d")
    endpoint = os.environ.get("PET_RDZV_ENDPOINT", "")
    if not endpoint and backend == "c10d":
        endpoint = "127.0.0.1:29400"
    nproc = _nproc(os.environ.get("PET_NPROC_PER_NODE", "1"))
    # torchrun's own rule, which launch_agent skips: ranks sharing a node's cores must not each
    # start one thread per core (on CPU that oversubscribes and runs several times slower).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc,
        run_id=os.environ.get("PET_RDZV_ID", "kubetrain"),
        role="trainer",
        rdzv_endpoint=endpoint,
        rdzv_backend=backend,
        rdzv_configs=rdzv_conf,
        max_restarts=int(os.environ.get("PET_MAX_RESTARTS", "3")),
        monitor_interval=float(os.environ.get("PET_MONITOR_INTERVAL", "1")),
        start_method="spawn",
        local_addr=os.environ.get("PET_LOCAL_ADDR") or None,
        shutdown_timeout=save_timeout + STOP_MARGIN_SECONDS,
    )
    args = ["-u", "-m", "kubetrain_trainer", "--spec", spec_path, "--run-dir", str(run_dir)]
    try:
        launch_agent(config, sys.executable, args)
    except ChildFailedError as exc:
        codes = {int(rank): int(f.exitcode) for rank, f in exc.failures.items()}
        return _preempted(launch_dir) or classify_failure(codes, launch_dir)
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        preempted = _preempted(launch_dir)
        if preempted:
            return preempted
        if not state.started_workers:  # stopped during rendezvous: nothing ran, nothing lost
            return Outcome(EXIT_PREEMPTED, "Preempted", f"{name} before training started")
        return Outcome(EXIT_RETRYABLE, "PreemptedWithoutCheckpoint",
                       f"{name}: workers stopped before a checkpoint committed; resuming loses the steps "
                       "since the last committed checkpoint")
    except Exception as exc:  # rendezvous timeouts and closed rendezvous land here
        return Outcome(EXIT_RETRYABLE, type(exc).__name__, str(exc) or repr(exc))
    return _preempted(launch_dir) or _succeeded(run_dir, launch_dir)


def _succeeded(run_dir: Path, launch_dir: Path) -> Outcome:
    """Success, with the final step and loss (the operator's last /progress poll may predate the
    last steps): from this pod's workers' `finished` markers, else rank 0's summary."""
    rec = max(_markers(launch_dir, "finished"), key=lambda m: m.get("step") or 0, default=None)
    if rec is None:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        rec = {"step": summary.get("steps"), "loss": summary.get("final_loss")}
    step = rec.get("step") if isinstance(rec.get("step"), int) else None
    loss = rec.get("loss") if isinstance(rec.get("loss"), (int, float)) else None
    detail = f" at step {step}" + (f", final loss {loss:.4f}" if loss is not None else "") if step else ""
    return Outcome(EXIT_OK, "Succeeded", f"training finished{detail}", step, loss)


# ------------------------------------------------------------------------------------ main


def _signal_to_exception(signum: int, _frame: Any) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException

    raise SignalException(f"received {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetrain_trainer.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.environ.get(k.ENV_SPEC_FILE),
                        help="TrainingJob YAML/JSON (default: $KUBETRAIN_SPEC_FILE)")
    parser.add_argument("--run-dir", default=os.environ.get(k.ENV_RUN_DIR),
                        help="metrics, checkpoints (default: $KUBETRAIN_RUN_DIR or ./runs/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[launch] %(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    started = time.monotonic()
    termination_log = termination_log_path()  # read before _main points workers elsewhere
    if termination_log is not None:
        reserve(termination_log)
    outcome = _main(args)
    write_termination(outcome, termination_log)
    log.info("exit %d (%s) after %.1fs: %s", outcome.code, outcome.reason, time.monotonic() - started,
             outcome.message)
    return outcome.code


def _main(args: argparse.Namespace) -> Outcome:
    if not args.spec:
        return Outcome(EXIT_INVALID_SPEC, "InvalidSpec", "no spec: pass --spec FILE or set KUBETRAIN_SPEC_FILE")
    obj, problem = preflight(args.spec)
    if problem:
        return problem
    assert obj is not None
    from kubetrain.api import TrainingJob

    job = TrainingJob.model_validate(obj)
    name = str(job.metadata.get("name") or "job")
    run_dir = Path(args.run_dir or Path("runs") / name)
    try:
        lock = acquire(run_dir)  # one run per run directory (the same job's pods share it)
    except RunDirBusy as exc:
        return Outcome(EXIT_RETRYABLE, "RunDirInUse", str(exc))
    except OSError as exc:
        return _run_dir_outcome(run_dir, exc)
    launch_dir, owner_fd = make_launch_dir()
    os.environ[k.ENV_LAUNCH_DIR] = str(launch_dir)
    os.environ[k.ENV_RUN_DIR] = str(run_dir)
    os.environ[k.ENV_LAUNCHER_PID] = str(os.getpid())  # workers die with this process
    # Workers report to the launch dir; the launcher alone writes the pod's termination log.
    os.environ[k.ENV_TERMINATION_LOG] = os.devnull
    # From here SIGTERM/SIGINT/SIGHUP become the agent's SignalException, also during rendezvous.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _signal_to_exception)
    try:
        return run_agent(str(Path(args.spec).resolve()), run_dir, launch_dir,
                         job.spec.checkpoint.save_timeout_seconds, job.spec.elastic.rendezvous_timeout_seconds)
    finally:
        shutil.rmtree(launch_dir, ignore_errors=True)
        os.close(owner_fd)
        lock.release()


def _exit(code: int) -> None:
    """Exit at once once the outcome is recorded: the interpreter's teardown of torch's elastic
    agent (rendezvous handlers, threads) takes seconds and does nothing for us (a launcher that
    is asked to stop should be gone when its workers are)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
