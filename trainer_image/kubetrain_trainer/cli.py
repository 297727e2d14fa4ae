"""``python -m kubetrain_trainer --spec FILE`` — one training process (run it under torchrun).

Exit codes (DESIGN.md): 0 done, 64 invalid spec, 65 model/data error or divergence (permanent),
75 stopped on SIGTERM/SIGINT after a committed checkpoint, anything else retryable.  On failure
``{reason, message, step}`` is written to the termination log (``$KUBETRAIN_TERMINATION_LOG``, or
``/dev/termination-log`` when it exists), to ``<run dir>/failures/rank<R>.json`` and, under the
launcher, to ``$KUBETRAIN_LAUNCH_DIR/failure-rank<R>.json``; a preempted rank writes
``$KUBETRAIN_LAUNCH_DIR/preempted-rank<R>.json`` (``{"step": N}``) once its checkpoint committed.
Checkpoints: ``$KUBETRAIN_CHECKPOINT_DIR`` (default ``<run dir>/checkpoints``), see ``checkpoint``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from kubetrain.api import constants as k
from kubetrain.api.deepspeed import gather_16bit_weights_on_model_save

from . import config
from .errors import EXIT_OK, EXIT_PREEMPTED, EXIT_RETRYABLE, TrainerError
from .protocol import launch_dir_from_env, write_failure, write_marker

log = logging.getLogger("kubetrain_trainer")


def run_dir_for(name: str, cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get(k.ENV_RUN_DIR) or Path("runs") / name)


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank{rank}] %(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _summary_json(summary: Any) -> dict[str, Any]:
    out = dataclasses.asdict(summary)
    out.pop("history", None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubetrain_trainer", description=__doc__.splitlines()[0])
    ap.add_argument("--spec", help="TrainingJob or spec as JSON/YAML file (default: $KUBETRAIN_SPEC)")
    ap.add_argument("--run-dir", help="where metrics.jsonl and summary.json go "
                    "(default: $KUBETRAIN_RUN_DIR or ./runs/<name>)")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    launcher = os.environ.get(k.ENV_LAUNCHER_PID)
    if launcher:  # under the launcher: die with it (it alone can coordinate a stop)
        from . import lifeline

        lifeline.die_with_parent(int(launcher), signal.SIGKILL)
    from . import signals

    signals.install()  # before anything slow: a SIGTERM during start-up must not kill us unsaved

    from . import distributed  # torch import after argument parsing (fast --help)

    trainer = None
    monitors: list[Any] = []
    fallback = args.run_dir or os.environ.get(k.ENV_RUN_DIR)
    run_dir: Path | None = Path(fallback) if fallback else None  # until the spec names the job
    rc = EXIT_OK
    try:
        cfg = config.load(args.spec)
        run_dir = run_dir_for(cfg.name, args.run_dir)
        ctx = distributed.init(cfg.gpus_requested, cfg.elastic.collective_timeout_seconds)
        from .checkpoint import Checkpointer, checkpoint_root
        from .engine import Trainer
        from .faults import Faults, poison_params
        from .metrics import metrics_port
        from .monitor import open_monitors

        faults = Faults.from_env()
        trainer = Trainer(cfg, ctx, run_dir, metrics_port=metrics_port(), faults=faults, keep_history=False)
        if faults.step_sleep_s:  # fault injection (tests): pace the steps
            trainer.callbacks.append(lambda _t, _r: time.sleep(faults.step_sleep_s))
        poison = poison_params(faults)
        if poison is not None:  # fault injection (tests): a NaN parameter after a given step
            trainer.callbacks.append(poison)  # type: ignore[arg-type]
        signals.on_request(lambda t=trainer: setattr(t, "stop_signal", True))
        checkpointer = Checkpointer(trainer, checkpoint_root(run_dir), launch_dir=launch_dir_from_env())
        trainer.callbacks.append(checkpointer.on_step)
        monitors = open_monitors(cfg.spec.deepspeed, run_dir) if ctx.is_main else []
        trainer.callbacks.extend(monitors)  # DeepSpeed's tensorboard / csv_monitor (monitor.py)
        checkpointer.restore()
        summary = trainer.fit()
        checkpointer.close()
        if not trainer.stop_requested and gather_16bit_weights_on_model_save(cfg.spec.deepspeed):
            from .final_weights import write_consolidated_16bit  # DeepSpeed's 16-bit save, all ranks

            write_consolidated_16bit(trainer, run_dir / "final")
        if trainer.stop_requested:
            step = checkpointer.last_committed
            write_marker(launch_dir_from_env(), "preempted", rank, {"step": step})
            log.info("stopped after the checkpoint of step %s; exit %d", step, EXIT_PREEMPTED)
            rc = EXIT_PREEMPTED
        else:  # every rank: a pod without rank 0 (and without a shared run dir) reports the end too
            write_marker(launch_dir_from_env(), "finished", rank, {"step": summary.steps, "loss": summary.final_loss})
        if not trainer.stop_requested and ctx.is_main:
            (run_dir / "summary.json").write_text(json.dumps(_summary_json(summary), indent=2) + "\n")
            log.info(
                "done: %d steps, final loss %.4f, %.0f tokens/s", summary.steps,
                summary.final_loss if summary.final_loss is not None else float("nan"), summary.tokens_per_s or 0,
            )
    except TrainerError as e:
        log.error("%s: %s", e.reason, e)
        write_failure(run_dir, rank, e.reason, str(e), trainer.step if trainer else None)
        rc = e.exit_code
    except BaseException as e:  # torch's CheckpointException is a BaseException, not an Exception
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        log.error("unexpected failure:\n%s", traceback.format_exc())
        write_failure(run_dir, rank, type(e).__name__, f"{e}", trainer.step if trainer else None)
        rc = EXIT_RETRYABLE
    finally:
        for m in monitors:
            m.close()
        if trainer is not None:
            trainer.close()
    if rc in (EXIT_OK, EXIT_PREEMPTED):
        distributed.shutdown()
    else:
        # Peers may be blocked in a collective: do not barrier, do not run atexit teardown (which
        # can hang or abort in gloo); torchrun stops the rest of the group.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(rc)
    return rc
