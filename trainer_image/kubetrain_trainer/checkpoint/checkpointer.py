"""The Checkpointer: saves on ``checkpoint.intervalSteps``, at the last step and on an agreed stop;
restores the newest valid checkpoint (or ``checkpoint.initFrom``) before training.

Commit protocol: the state is checked finite (never commit poison); every rank writes into
``step-N.tmp-<token>`` through DCP with each file hashed as it is written; the per-rank checksums
are gathered on rank 0, which writes ``kubetrain.json`` and ``manifest.json``, fsyncs, renames the
directory to ``step-N``, rewrites ``latest`` and prunes to ``checkpoint.keep`` (never the newest
checkpoint verified by reading it back); a barrier tells every rank the step is committed.  With
``checkpoint.async`` the write runs in the background (``dcp.async_save`` on a gloo group of its
own) and is committed only once every rank has reported its write done (a flag summed into the
step's all-reduce).  Every failure is caught as ``BaseException`` and named (``failures``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_RETRYABLE, ModelError, SpecError
from ..protocol import write_failure
from . import restore as restore_mod
from . import safetensors_init
from .comm import Comm
from .failures import PASS_THROUGH, NonFiniteStateError, NoValidCheckpointError, classify, storage_errno
from .layout import META_FILE, dir_bytes, install, prune, read_meta, step_dir_name, write_atomic
from .manifest import MANIFEST_FILE, FileRecord, Recorder, build_manifest, digest_bytes
from .state import apply_loaded, build_meta, load_sync, non_finite, per_replica, reseed, state_dict
from .storage import hashing_writer, resolve

if TYPE_CHECKING:
    from ..engine import Trainer

log = logging.getLogger("kubetrain_trainer")

# torch.save computes a CRC32 of every record it writes (DCP writes each tensor with torch.save):
# the manifest's checksum already covers every byte, so that second checksum is switched off for
# our saves (loading does not need it; bench/checkpoint_io.py --what-if torch-crc32 measures it).
TORCH_CRC32 = False


@dataclass
class _Pending:
    step: int
    tmp: Path
    meta: dict[str, Any]
    future: Future[Any]
    started: float
    recorder: Recorder


class Checkpointer:
    """Register ``on_step`` as a trainer callback; call ``restore()`` before ``fit()`` and
    ``close()`` after it."""

    def __init__(self, trainer: Trainer, root: Path, *, launch_dir: Path | None = None) -> None:
        import torch.distributed as dist

        self.trainer = trainer
        self.root = root
        self.cfg = trainer.cfg.checkpoint
        self.rank = trainer.ctx.rank
        self.world = trainer.ctx.world_size
        self.comm = Comm(self.rank, self.world)
        self.launch_dir = launch_dir
        self.pending: _Pending | None = None
        self.last_committed: int | None = None
        self.save_seconds: list[float] = []
        self.load_seconds: float | None = None
        self.verify_seconds: float | None = None
        self.restored_from: Path | None = None
        self.refused_steps: list[int] = []  # saves refused: the state was not finite
        self.async_group: Any = None
        if self.cfg.async_:
            # The background write's collectives must not interleave with the training step's on
            # the default group: a group of its own (gloo: async_save needs a CPU backend).
            timeout = timedelta(seconds=trainer.cfg.elastic.collective_timeout_seconds)
            self.async_group = dist.new_group(backend="gloo", timeout=timeout)
        self._flag_index = len(trainer.flag_sources)
        trainer.flag_sources.append(self._pending_done_flag)
        if self.rank == 0:
            with contextlib.suppress(OSError):  # restore() names what is wrong with the directory
                self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ restore

    def restore(self) -> Path | None:
        """Load the newest valid checkpoint of this job; without any, ``checkpoint.initFrom``.
        Returns the checkpoint loaded (None: a fresh start)."""
        t0 = time.monotonic()
        choice = restore_mod.choose(self.comm, self.root, self.cfg.on_no_valid)
        self.verify_seconds = time.monotonic() - t0
        if choice.path is not None:
            self._load(choice.path, full=True)
            self.restored_from = choice.path
            self.last_committed = self.trainer.step
            self.trainer.checkpoint_committed(self.trainer.step)
            return choice.path
        if not self.cfg.init_from:
            return None
        if safetensors_init.is_safetensors(self.cfg.init_from.path):  # weights only, no pickle
            self.restored_from = safetensors_init.load_weights(self.trainer, self.comm, self.cfg.init_from.path)
            return self.restored_from
        path = self._init_from_path(self.cfg.init_from.path)
        self._load(path, full=self.cfg.init_from.mode == "full")
        self.restored_from = path
        return path

    def _init_from_path(self, given: str) -> Path:
        answer: tuple[str, str] = ("", "")
        if self.rank == 0:
            try:
                answer = ("ok", str(resolve(given)))
            except FileNotFoundError as e:
                answer = ("damaged" if "not a valid checkpoint" in str(e) or "no valid" in str(e) else "missing",
                          str(e))
            except OSError as e:
                answer = ("storage", str(classify(e, "reading checkpoint.initFrom", given)))
        kind, value = self.comm.broadcast(answer)
        if kind == "missing":
            raise SpecError(f"checkpoint.initFrom.path: {value}")
        if kind in ("damaged", "storage"):
            raise NoValidCheckpointError(f"checkpoint.initFrom.path: {value}")
        return Path(value)

    def _load(self, path: Path, *, full: bool) -> None:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        t0 = time.monotonic()
        meta = read_meta(path)
        saved_world = int(meta.get("world_size") or 0)
        trainer = self.trainer
        # the same layout: same world and tensor-parallel size (a tp change reshards through DCP too)
        same_world = saved_world == self.world and int(meta.get("tensor_parallel") or 1) == (
            trainer.cfg.parallel.tensor_parallel) and int(meta.get("pipeline_parallel") or 1) == (
            trainer.cfg.parallel.pipeline_parallel)
        replica = None
        if full and meta.get("per_replica") and saved_world:
            # This rank's own replica at the same world size; otherwise a deterministic choice:
            # replica r mod W_old (per-replica modes), or replica 0 for all (every rank must agree).
            replica = (self.rank % saved_world) if per_replica(trainer) else 0
        state = state_dict(trainer, optimizer=full, rng=full and same_world, replica=replica)
        what = "checkpoint" if path.parent == self.root else "checkpoint.initFrom"
        try:
            dcp.load(state, storage_reader=FileSystemReader(str(path)))
            apply_loaded(trainer, state if replica is None else state["local"][f"rank{replica}"], optimizer=full)
        except BaseException as e:  # torch's CheckpointException is a BaseException
            named = classify(e, f"loading {what} {path}", path)
            if named.exit_code != EXIT_RETRYABLE:
                raise named from e
            raise ModelError(f"{what} {path} does not fit this model/optimizer: {str(named)[-1500:]}") from e
        if full:
            try:
                load_sync(trainer, path)
            except (ValueError, KeyError) as e:
                raise ModelError(f"checkpoint {path}: the sync mode's state does not fit: {e}") from e
            try:
                trainer.load_trainer_state(meta["trainer"])
            except (KeyError, ValueError) as e:
                raise SpecError(f"cannot resume from {path}: {type(e).__name__}: {e}") from None
            if same_world:
                gens = state["rng"][f"rank{self.rank}"]
                torch.set_rng_state(gens["cpu"])
                if "cuda" in gens:
                    torch.cuda.set_rng_state(gens["cuda"], trainer.ctx.device)
            else:
                reseed(trainer, trainer.step)
        self.load_seconds = time.monotonic() - t0
        if self.rank == 0:
            log.info(
                "loaded %s %s (saved by %s on %s ranks at step %d; verified in %.2fs) in %.2fs; continuing at "
                "step %d", "checkpoint" if full else "weights from", path, meta.get("strategy"),
                meta.get("world_size"), meta["step"], self.verify_seconds or 0.0, self.load_seconds,
                trainer.step + 1,
            )

    # ------------------------------------------------------------------ save

    def save(self, step: int, *, blocking: bool = True, stopping: bool = False, final: bool = False) -> bool:
        """Checkpoint the current state as step ``step`` (every rank calls this).  False: refused
        because the state is not finite (the previous checkpoint stays ``latest``)."""
        import torch
        import torch.distributed.checkpoint as dcp

        self.wait_pending()
        started = time.monotonic()
        token = self.comm.broadcast(uuid.uuid4().hex[:8])
        tmp = self.root / f"{step_dir_name(step)}.tmp-{token}"
        meta = build_meta(self.trainer, step, self.world)
        replica = self.rank if per_replica(self.trainer) else None
        state = state_dict(self.trainer, optimizer=True, rng=True, sync=True, replica=replica)
        if not self._finite(state, step, must=stopping or final):
            return False
        recorder = Recorder()
        writer = hashing_writer(tmp, recorder)
        torch.serialization.set_crc32_options(TORCH_CRC32)
        try:
            if not blocking:
                future = dcp.async_save(state, storage_writer=writer, process_group=self.async_group)
                self.pending = _Pending(step, tmp, meta, _as_future(future), started, recorder)
                return True
            dcp.save(state, storage_writer=writer)
        except BaseException as e:  # torch's CheckpointException is a BaseException
            if isinstance(e, PASS_THROUGH):
                raise
            self._discard(tmp)
            # dcp.save fails on every rank together; the rank whose write failed knows the errno.
            codes = self.comm.all_gather(storage_errno(e, recorder.errors))
            code = next((c for c in codes if c is not None), None)
            raise classify(e, f"saving the checkpoint of step {step}", self.root, recorder.errors, code) from e
        self._commit(step, tmp, meta, started, recorder, stopping=stopping)
        return True

    def _finite(self, state: dict[str, Any], step: int, *, must: bool) -> bool:
        bad = non_finite(state, self.world)
        if not bad:
            return True
        self.refused_steps.append(step)
        message = (f"the state at step {step} is not finite ({', '.join(bad[:3])}"
                   f"{', ...' if len(bad) > 3 else ''}): not committed; the last committed checkpoint "
                   f"(step {self.last_committed}) stays latest")
        if must:
            raise NonFiniteStateError(message)
        if self.rank == 0:
            log.error("%s", message)
        return False

    def _discard(self, tmp: Path) -> None:
        """A failed save: its partial files go (space for the next try); ``latest`` is untouched."""
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("the save into %s failed; the previous checkpoint stays latest", tmp.name)

    def _commit(self, step: int, tmp: Path, meta: dict[str, Any], started: float, recorder: Recorder,
                *, stopping: bool = False) -> None:
        every = self.comm.all_gather({name: (r.size, r.digest) for name, r in recorder.files.items()})
        if self.rank == 0:
            _inject_commit_faults(self.trainer, self.launch_dir, step, stopping)
            files = {name: FileRecord(*rec) for per_rank in every for name, rec in per_rank.items()}
            try:
                meta_text = json.dumps(meta, indent=1) + "\n"
                write_atomic(tmp / META_FILE, meta_text)
                files[META_FILE] = FileRecord(len(meta_text.encode()), digest_bytes(meta_text.encode()))
                write_atomic(tmp / MANIFEST_FILE, build_manifest(step, files))
                install(tmp, self.root, step_dir_name(step))
                protect = {self.restored_from.name} if self.restored_from and self.restored_from.parent == self.root \
                    else set()
                prune(self.root, self.cfg.keep, protect)
            except BaseException as e:
                self._discard(tmp)
                raise classify(e, f"committing the checkpoint of step {step}", self.root) from e
        self.comm.barrier()
        seconds = time.monotonic() - started
        self.save_seconds.append(seconds)
        self.last_committed = step
        self.trainer.checkpoint_committed(step, seconds)
        if self.rank == 0:
            final = self.root / step_dir_name(step)
            late = f", in the background until step {self.trainer.step}" if self.trainer.step != step else ""
            log.info("checkpoint %s committed in %.2fs (%.1f MB%s)", final, seconds, dir_bytes(final) / 1e6, late)

    # ------------------------------------------------------------------ async bookkeeping

    def _pending_done_flag(self) -> float:
        return 1.0 if self.pending is not None and self.pending.future.done() else 0.0

    def _all_done(self) -> bool:
        sums = self.trainer.flag_sums
        return self.pending is not None and len(sums) > self._flag_index and sums[self._flag_index] >= self.world

    def wait_pending(self) -> None:
        """Block until the save in flight has finished everywhere, then commit it."""
        pending = self.pending
        if pending is None:
            return
        self._finish(pending)

    def _finish(self, pending: _Pending) -> None:
        self.pending = None
        try:
            pending.future.result()
        except BaseException as e:
            self._discard(pending.tmp)
            raise classify(e, f"saving the checkpoint of step {pending.step}", self.root,
                           pending.recorder.errors) from e
        self._commit(pending.step, pending.tmp, pending.meta, pending.started, pending.recorder)

    # ------------------------------------------------------------------ the trainer callback

    def on_step(self, trainer: Trainer, rec: dict[str, Any]) -> None:
        step = trainer.step
        if self.pending is not None and self._all_done():
            self._finish(self.pending)
        if trainer.stop_requested:
            self.save_for_stop(step)
        elif step >= trainer.cfg.training.max_steps:
            if self.last_committed != step:
                self.save(step, blocking=True, final=True)
            self.wait_pending()
        elif self.cfg.interval_steps and step % self.cfg.interval_steps == 0:
            self.save(step, blocking=not self.cfg.async_)

    def save_for_stop(self, step: int) -> None:
        """The agreed stop: checkpoint this step within ``checkpoint.saveTimeoutSeconds`` of the
        signal, or give up with a retryable failure (the launcher would kill us soon after)."""
        from .. import signals

        since = signals.requested_at() or time.monotonic()
        budget = self.cfg.save_timeout_seconds - (time.monotonic() - since)
        watchdog = threading.Timer(max(1.0, budget), self._save_timed_out, args=(step,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if self.rank == 0:
                log.info("stop requested (%s): checkpointing step %d", signals.signal_name() or "peer", step)
            self.wait_pending()
            if self.last_committed != step:
                self.save(step, blocking=True, stopping=True)
        finally:
            watchdog.cancel()

    def _save_timed_out(self, step: int) -> None:
        message = (
            f"the checkpoint of step {step} did not commit within checkpoint.saveTimeoutSeconds="
            f"{self.cfg.save_timeout_seconds:g}; stopping without it (the last committed checkpoint is "
            f"step {self.last_committed})"
        )
        log.error("%s", message)
        write_failure(self.trainer.run_dir, self.rank, "CheckpointTimeout", message, step)
        logging.shutdown()
        os._exit(EXIT_RETRYABLE)

    def close(self) -> None:
        """End of the run: a save still in flight is waited for (and committed)."""
        try:
            self.wait_pending()
        finally:
            if self.async_group is not None:
                import torch.distributed as dist

                with contextlib.suppress(Exception):  # teardown must not turn success into failure
                    dist.destroy_process_group(self.async_group)
                self.async_group = None


def _inject_commit_faults(trainer: Trainer, launch_dir: Path | None, step: int, stopping: bool) -> None:
    """FAULT INJECTION (tests; ``faults``): a slow stop checkpoint, a save that hangs before commit."""
    faults = trainer.faults
    if stopping and faults.stop_save_sleep_s and _fault_once(launch_dir, "stop-save-sleep"):
        log.warning("FAULT INJECTION: the stop checkpoint sleeps %gs before it commits", faults.stop_save_sleep_s)
        time.sleep(faults.stop_save_sleep_s)
    if faults.save_hang_step == step:
        log.warning("FAULT INJECTION: the save of step %d hangs before it commits", step)
        while True:
            time.sleep(3600)


def _fault_once(launch_dir: Path | None, name: str) -> bool:
    """Fault injection: True the first time per launcher (always without one)."""
    if launch_dir is None:
        return True
    token = launch_dir / f"fault-{name}-done"
    if token.exists():
        return False
    token.touch()
    return True


def _as_future(obj: Any) -> Future[Any]:
    """dcp.async_save returns a Future or (newer stagers) an AsyncSaveResponse."""
    upload = getattr(obj, "upload_completion", None)
    return upload if upload is not None else obj
