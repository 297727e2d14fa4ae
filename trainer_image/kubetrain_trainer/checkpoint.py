"""Sharded, atomic checkpoints with torch.distributed.checkpoint (DCP), loadable at any world size
and by any strategy.

Layout (``$KUBETRAIN_CHECKPOINT_DIR``, default ``<run dir>/checkpoints``)::

    latest                      the committed checkpoint's directory name ("step-00000100"),
                                written LAST (temp file + fsync + os.replace)
    step-00000100/              one directory per committed step
        .metadata               DCP's index: every tensor's global shape and where its chunks are
        __<rank>_0.distcp       DCP data, one file per writing rank
        kubetrain.json          step, world size, strategy, trainer state (data position = consumed
                                samples, applied steps, loss scaler, lr schedule), model sizes
    step-00000200.tmp-1a2b3c4d/ a save in flight (or killed): never read, removed at the next start

What is saved (one logical layout for every strategy, so resharding is DCP's job):

- ``model.<fqn>``: ``get_model_state_dict`` — full tensors under DDP/zero1 (DCP writes each once),
  DTensor shards under FSDP2 (zero2/zero3); the checkpoint records global shapes.
- ``optim.state.<fqn>.<name>`` / ``optim.param_groups.<fqn>.<key>``: ``get_optimizer_state_dict``
  with ``flatten_optimizer_state_dict=True`` — keyed by parameter name, not by position, so every
  key belongs to exactly one parameter.  zero1 (``ZeroRedundancyOptimizer``) saves the flattened
  state of its LOCAL optimizer: each rank writes the parameters ZeRO assigned to it, the union is
  the full optimizer, and a load at another world size reads whatever the new partition assigns.
- ``local.rank<r>.{model,optim}.*``: only in the sync modes without a gradient all-reduce (localSGD,
  DiLoCo), where every rank's optimizer state — and its parameters between syncs — is its own: each
  rank's, restored exactly at the same world size; at another world size rank r takes old rank
  ``r mod W_old``'s (``model`` then holds one replica, for export and initFrom).
- ``sync.*``: the sync mode's state (``sync.py``: DiLoCo's global parameters and outer momentum,
  PowerSGD's counters), replicated, read back whole on every rank.
- ``rng.rank<r>.{cpu,cuda}``: each rank's generator states.  A resume at the same world size
  restores them; at another world size each rank reseeds deterministically from
  ``(training.seed, rank, step)`` (there is no meaningful mapping of old ranks' streams).

Commit protocol: every rank writes into ``step-N.tmp-<token>`` (``dcp.save``: returns on rank 0 only
after every rank's data is written and the metadata is written); rank 0 writes ``kubetrain.json``,
fsyncs, renames the directory to ``step-N``, then rewrites ``latest``, then prunes to the last
``checkpoint.keep``; a barrier tells every rank the step is committed.  With ``checkpoint.async``
the write runs in a background thread on a separate gloo group (``dcp.async_save``, state staged to
CPU first) and is committed only after every rank has reported its write done (a flag summed into
the step's all-reduce), so a save in flight is never marked committed.

Discovery: ``latest`` first; if it is missing or its checkpoint is incomplete (no readable
``.metadata``, no ``kubetrain.json``, or a data file shorter than the metadata says) that one is
skipped with a warning and the newest complete ``step-*`` directory is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetrain.api import constants as k

from .errors import EXIT_RETRYABLE, ModelError, SpecError, TrainerError
from .protocol import write_failure

if TYPE_CHECKING:
    from .engine import Trainer

log = logging.getLogger("kubetrain_trainer")

FORMAT_VERSION = 1
LATEST = "latest"
META_FILE = "kubetrain.json"
DCP_METADATA = ".metadata"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(TrainerError):
    """A checkpoint could not be written or read (retryable: storage may come back)."""

    reason = "CheckpointError"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_root(run_dir: Path) -> Path:
    """``$KUBETRAIN_CHECKPOINT_DIR``, else ``<run dir>/checkpoints``."""
    explicit = os.environ.get(k.ENV_CHECKPOINT_DIR)
    return Path(explicit) if explicit else run_dir / "checkpoints"


# ----------------------------------------------------------------------------- files (no torch.distributed)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((path / META_FILE).read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise ValueError(f"{META_FILE} has no integer step")
    return meta


def problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when it is."""
    if not path.is_dir():
        return "not a directory"
    try:
        read_meta(path)
    except (OSError, ValueError) as e:
        return f"{META_FILE} unreadable: {e}"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # missing, truncated or not a pickle
        return f"{DCP_METADATA} unreadable: {type(e).__name__}: {e}"
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel is None:
            continue
        if rel not in sizes:
            try:
                sizes[rel] = (path / rel).stat().st_size
            except OSError:
                return f"data file {rel} is missing"
        end = int(info.offset) + int(info.length)
        if sizes[rel] < end:
            return f"data file {rel} is truncated ({sizes[rel]} bytes, the metadata needs {end})"
    return None


def committed_dirs(root: Path) -> list[tuple[int, Path]]:
    """``step-N`` directories (renamed into place, so complete unless damaged later), newest first."""
    out = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def read_latest(root: Path) -> str | None:
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        return None
    return name if _STEP_DIR.match(name) else None


def find_latest(root: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from and warnings about the ones skipped."""
    warnings: list[str] = []
    candidates: list[Path] = []
    name = read_latest(root)
    if name is not None:
        candidates.append(root / name)
    elif (root / LATEST).exists():
        warnings.append(f"{root / LATEST} does not name a checkpoint; looking for the newest complete one")
    candidates += [p for _, p in committed_dirs(root) if p.name != name]
    for path in candidates:
        why = problem(path)
        if why is None:
            return path, warnings
        warnings.append(f"skipping checkpoint {path}: {why}")
    return None, warnings


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, a checkpoints root (its ``latest``) or a run directory
    (``checkpoints/latest``) → the checkpoint directory.  Raises FileNotFoundError."""
    p = Path(path)
    if (p / DCP_METADATA).exists() or (p / META_FILE).exists():
        why = problem(p)
        if why:
            raise FileNotFoundError(f"{p} is not a complete checkpoint: {why}")
        return p
    for root in (p, p / "checkpoints"):
        if (root / LATEST).exists() or committed_dirs(root):
            found, warnings = find_latest(root)
            for w in warnings:
                log.warning("%s", w)
            if found is not None:
                return found
    raise FileNotFoundError(f"no complete checkpoint at {p} (a checkpoint, checkpoints or run directory)")


def remove_stale_tmp(root: Path) -> None:
    """Directories of saves that never committed (the process died mid-save)."""
    for p in list(root.glob("step-*.tmp-*")) + list(root.glob(".trash-*")):
        log.warning("removing %s: a checkpoint save that never committed", p)
        shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` committed checkpoints (never the one ``latest`` names)."""
    current = read_latest(root)
    for _, path in committed_dirs(root)[keep:]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)


def install(tmp: Path, root: Path, name: str) -> Path:
    """Rename a finished save into place and point ``latest`` at it (rank 0)."""
    final = root / name
    if final.exists():  # an older, uncommitted-over copy of the same step (resumed from before it)
        trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_atomic(root / LATEST, name + "\n")
    return final


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# ----------------------------------------------------------------------------- state dicts


def _optimizer_target(trainer: Trainer) -> Any:
    """The optimizer whose state this rank holds: zero1's local shard optimizer, else the optimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    opt = trainer.optimizer
    return opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, **kw)


def per_replica(trainer: Trainer) -> bool:
    """Sync modes without a gradient all-reduce (localSGD, DiLoCo): each rank's optimizer state (and,
    between syncs, its parameters) is its own."""
    from .sync import replicate_only

    return replicate_only(trainer.cfg.parallel.sync_mode)


def state_dict(trainer: Trainer, *, optimizer: bool, rng: bool, sync: bool = False,
               replica: int | None = None) -> dict[str, Any]:
    """The DCP state dict of this rank (tensors are the live ones: load writes into them).  ``sync``
    (saving only): the sync mode's state, which a load reads by the checkpoint's own keys.
    ``replica``: model and optimizer as replica ``replica``'s ``local.rank<i>`` entries instead of
    the shared ``model`` / ``optim`` (saving in a per-replica mode adds them to ``model``)."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = trainer.par.inner
    weights = get_model_state_dict(model, options=_options())
    out: dict[str, Any] = {}
    optim = None
    if optimizer:
        optim = get_optimizer_state_dict(
            model, _optimizer_target(trainer), options=_options(flatten_optimizer_state_dict=True)
        )
    if replica is None:
        out["model"] = weights
        if optim is not None:
            out["optim"] = optim
    else:
        out["local"] = {f"rank{replica}": {"model": weights, **({"optim": optim} if optim is not None else {})}}
        if sync:  # saving: the shared copy too (one replica's; what export, initFrom and resharding read)
            out["model"] = weights
    syncer = getattr(trainer, "syncer", None)
    if sync and syncer is not None:
        out["sync"] = syncer.state_dict()
    if rng:
        gens: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if trainer.ctx.device.type == "cuda":
            gens["cuda"] = torch.cuda.get_rng_state(trainer.ctx.device)
        out["rng"] = {f"rank{trainer.ctx.rank}": gens}
    return out


def _load_local_optimizer(trainer: Trainer, flat: dict[str, Any]) -> None:
    """zero1: fill the local optimizer's state from the flattened, name-keyed checkpoint entries
    (DCP's unflatten cannot handle a parameter group that ZeRO left empty on this rank)."""
    local = _optimizer_target(trainer)
    names = {p: n for n, p in trainer.par.inner.named_parameters()}
    sd = local.state_dict()
    index = 0
    for group in local.param_groups:
        for p in group["params"]:
            fqn = names[p]
            for key in list(sd["state"].get(index, {})):
                sd["state"][index][key] = flat[f"state.{fqn}.{key}"]
            index += 1
    local.load_state_dict(sd)


def _apply(trainer: Trainer, loaded: dict[str, Any], *, optimizer: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = trainer.par.inner
    set_model_state_dict(model, loaded["model"], options=_options())
    if not optimizer:
        return
    if isinstance(trainer.optimizer, ZeroRedundancyOptimizer):
        _load_local_optimizer(trainer, loaded["optim"])
    else:
        set_optimizer_state_dict(
            model, trainer.optimizer, loaded["optim"], options=_options(flatten_optimizer_state_dict=True)
        )


def _load_sync(trainer: Trainer, path: Path) -> None:
    """The sync mode's state, whatever keys it had when saved (it need not match the live object's:
    DiLoCo's momentum exists only after the first outer step), read whole on every rank."""
    syncer = getattr(trainer, "syncer", None)
    if syncer is None:
        return
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = None
    if any(key.startswith("sync.") for key in keys):
        state = _load_state_dict_from_keys({"sync"}, checkpoint_id=str(path)).get("sync")
    syncer.load_state_dict(state)


def reseed(trainer: Trainer, step: int) -> None:
    """The RNG policy when a checkpoint comes from another world size: a fresh deterministic stream
    per (seed, rank, step)."""
    import torch

    seed = (trainer.cfg.training.seed + 1 + trainer.ctx.rank) * 1_000_003 + step
    torch.manual_seed(seed % (2**63))


# ----------------------------------------------------------------------------- the checkpointer


@dataclass
class _Pending:
    step: int
    tmp: Path
    meta: dict[str, Any]
    future: Future[Any]
    started: float


class Checkpointer:
    """Saves on ``checkpoint.intervalSteps``, at the last step and on an agreed stop; restores the
    latest complete checkpoint (or ``checkpoint.initFrom``) before training.  Register
    ``on_step`` as a trainer callback."""

    def __init__(self, trainer: Trainer, root: Path, *, launch_dir: Path | None = None) -> None:
        import torch.distributed as dist

        self.trainer = trainer
        self.root = root
        self.cfg = trainer.cfg.checkpoint
        self.rank = trainer.ctx.rank
        self.world = trainer.ctx.world_size
        self.launch_dir = launch_dir
        self.pending: _Pending | None = None
        self.last_committed: int | None = None
        self.save_seconds: list[float] = []
        self.load_seconds: float | None = None
        self.restored_from: Path | None = None
        self.async_group: Any = None
        if self.cfg.async_:
            # The background write's collectives must not interleave with the training step's on
            # the default group: a group of its own (gloo: async_save needs a CPU backend).
            timeout = timedelta(seconds=trainer.cfg.elastic.collective_timeout_seconds)
            self.async_group = dist.new_group(backend="gloo", timeout=timeout)
        self._flag_index = len(trainer.flag_sources)
        trainer.flag_sources.append(self._pending_done_flag)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ collectives

    def _broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------ restore

    def restore(self) -> Path | None:
        """Load the latest complete checkpoint of this job; without one, ``checkpoint.initFrom``.
        Returns the checkpoint loaded (None: a fresh start)."""
        choice: tuple[str, str] | None = None
        if self.rank == 0:
            remove_stale_tmp(self.root)
            found, warnings = find_latest(self.root)
            for w in warnings:
                log.warning("%s", w)
            if found is not None:
                choice = (str(found), "full")
            elif self.cfg.init_from:
                try:
                    choice = (str(resolve(self.cfg.init_from)), "init-" + self.cfg.init_mode)
                except FileNotFoundError as e:
                    choice = ("", f"error:checkpoint.initFrom.path: {e}")
        choice = self._broadcast(choice)
        if choice is None:
            return None
        path_s, how = choice
        if how.startswith("error:"):
            raise SpecError(how[len("error:"):])
        path = Path(path_s)
        self._load(path, full=how in ("full", "init-full"))
        self.restored_from = path
        if how == "full":
            self.last_committed = self.trainer.step
            self.trainer.checkpoint_committed(self.trainer.step)
        return path

    def _load(self, path: Path, *, full: bool) -> None:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        t0 = time.monotonic()
        meta = read_meta(path)
        saved_world = int(meta.get("world_size") or 0)
        same_world = saved_world == self.world
        trainer = self.trainer
        replica = None
        if full and meta.get("per_replica") and saved_world:
            # This rank's own replica at the same world size; otherwise a deterministic choice:
            # replica r mod W_old (per-replica modes), or replica 0 for all (every rank must agree).
            replica = (self.rank % saved_world) if per_replica(trainer) else 0
        state = state_dict(trainer, optimizer=full, rng=full and same_world, replica=replica)
        try:
            dcp.load(state, storage_reader=FileSystemReader(str(path)))
            _apply(trainer, state if replica is None else state["local"][f"rank{replica}"], optimizer=full)
        except Exception as e:
            what = "checkpoint.initFrom" if path.parent != self.root else "checkpoint"
            raise ModelError(
                f"{what} {path} does not fit this model/optimizer: {type(e).__name__}: {str(e)[:1500]}"
            ) from e
        if full:
            try:
                _load_sync(trainer, path)
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
                "loaded %s %s (saved by %s on %s ranks at step %d) in %.2fs; continuing at step %d",
                "checkpoint" if full else "weights from", path, meta.get("strategy"), meta.get("world_size"),
                meta["step"], self.load_seconds, trainer.step + 1,
            )

    # ------------------------------------------------------------------ save

    def _meta(self, step: int) -> dict[str, Any]:
        t = self.trainer
        model = t.cfg.model
        return {
            "format": FORMAT_VERSION,
            "step": step,
            "world_size": self.world,
            "strategy": t.cfg.parallel.strategy,
            "precision": t.cfg.precision.dtype,
            "global_batch_size": t.cfg.training.global_batch_size,
            "sync_mode": t.cfg.parallel.sync_mode,
            "per_replica": per_replica(t),
            "trainer": t.trainer_state(),
            "model": {
                "preset": model.preset,
                "n_layers": model.n_layers,
                "n_heads": model.n_heads,
                "d_model": model.d_model,
                "vocab_size": model.vocab_size,
                "seq_len": model.seq_len,
                "tie_embeddings": model.tie_embeddings,
                "entrypoint": model.entrypoint,
                "entrypoint_args": model.entrypoint_args,
            },
            "job": t.cfg.name,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, step: int, *, blocking: bool = True, stopping: bool = False) -> None:
        """Checkpoint the current state as step ``step`` (every rank calls this)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter

        self.wait_pending()
        started = time.monotonic()
        token = self._broadcast(uuid.uuid4().hex[:8])
        tmp = self.root / f"{step_dir_name(step)}.tmp-{token}"
        meta = self._meta(step)
        replica = self.rank if per_replica(self.trainer) else None
        state = state_dict(self.trainer, optimizer=True, rng=True, sync=True, replica=replica)
        writer = FileSystemWriter(str(tmp), sync_files=True)
        try:
            if blocking:
                dcp.save(state, storage_writer=writer)
            else:
                future = dcp.async_save(state, storage_writer=writer, process_group=self.async_group)
                self.pending = _Pending(step, tmp, meta, _as_future(future), started)
                return
        except Exception as e:
            raise CheckpointError(f"saving the checkpoint of step {step} failed: {type(e).__name__}: {e}") from e
        self._commit(step, tmp, meta, started, stopping=stopping)

    def _commit(self, step: int, tmp: Path, meta: dict[str, Any], started: float, *, stopping: bool = False) -> None:
        faults = self.trainer.faults
        if self.rank == 0:
            if stopping and faults.stop_save_sleep_s and self._fault_once("stop-save-sleep"):
                log.warning("FAULT INJECTION: the stop checkpoint sleeps %gs before it commits", faults.stop_save_sleep_s)
                time.sleep(faults.stop_save_sleep_s)
            if faults.save_hang_step == step:
                log.warning("FAULT INJECTION: the save of step %d hangs before it commits", step)
                while True:
                    time.sleep(3600)
            try:
                write_atomic(tmp / META_FILE, json.dumps(meta, indent=1) + "\n")
                install(tmp, self.root, step_dir_name(step))
                prune(self.root, self.cfg.keep)
            except OSError as e:
                raise CheckpointError(f"committing the checkpoint of step {step} failed: {e}") from e
        self._barrier()
        seconds = time.monotonic() - started
        self.save_seconds.append(seconds)
        self.last_committed = step
        self.trainer.checkpoint_committed(step)
        if self.rank == 0:
            final = self.root / step_dir_name(step)
            late = f", in the background until step {self.trainer.step}" if self.trainer.step != step else ""
            log.info("checkpoint %s committed in %.2fs (%.1f MB%s)", final, seconds, dir_bytes(final) / 1e6, late)

    def _fault_once(self, name: str) -> bool:
        """Fault injection: True the first time per launcher (always without one)."""
        if self.launch_dir is None:
            return True
        token = self.launch_dir / f"fault-{name}-done"
        if token.exists():
            return False
        token.touch()
        return True

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
        except Exception as e:
            raise CheckpointError(
                f"saving the checkpoint of step {pending.step} failed: {type(e).__name__}: {e}"
            ) from e
        self._commit(pending.step, pending.tmp, pending.meta, pending.started)

    # ------------------------------------------------------------------ the trainer callback

    def on_step(self, trainer: Trainer, rec: dict[str, Any]) -> None:
        step = trainer.step
        if self.pending is not None and self._all_done():
            self._finish(self.pending)
        if trainer.stop_requested:
            self.save_for_stop(step)
        elif step >= trainer.cfg.training.max_steps:
            if self.last_committed != step:
                self.save(step, blocking=True)
            self.wait_pending()
        elif self.cfg.interval_steps and step % self.cfg.interval_steps == 0:
            self.save(step, blocking=not self.cfg.async_)

    def save_for_stop(self, step: int) -> None:
        """The agreed stop: checkpoint this step within ``checkpoint.saveTimeoutSeconds`` of the
        signal, or give up with a retryable failure (the launcher would kill us soon after)."""
        from . import signals

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


def _as_future(obj: Any) -> Future[Any]:
    """dcp.async_save returns a Future or (newer stagers) an AsyncSaveResponse."""
    upload = getattr(obj, "upload_completion", None)
    return upload if upload is not None else obj
