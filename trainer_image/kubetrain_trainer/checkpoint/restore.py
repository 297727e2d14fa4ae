"""Choosing what to resume from: every candidate is verified against its manifest (each rank reads
and hashes a share of the files, the verdict is agreed), a damaged one is logged by file name and
moved aside, and the previous committed checkpoint is tried.  Checkpoints that exist but are all
damaged stop the run (``NoValidCheckpoint``, exit 65) and are left as they are, unless
``checkpoint.onNoValid: restart``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .comm import Comm
from .failures import CheckpointError, CheckpointStorageError, NoValidCheckpointError, classify
from .layout import candidates, probe_writable, quarantine, remove_stale_tmp
from .manifest import FileRecord, ManifestError, check_files, read_manifest, share
from .storage import structure_problem

log = logging.getLogger("kubetrain_trainer")


@dataclass
class Choice:
    """What restore() decided (the same on every rank)."""

    path: Path | None = None  # the checkpoint to load; None: initFrom or a fresh start
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints that failed


def _error_record(err: CheckpointError) -> tuple[str, str, str]:
    kind = "storage" if isinstance(err, CheckpointStorageError) else "other"
    return kind, err.reason, str(err)


def _raise_record(record: tuple[str, str, str]) -> None:
    kind, reason, message = record
    if kind == "storage":
        raise CheckpointStorageError(reason, message)
    raise CheckpointError(message)


def plan(comm: Comm, root: Path) -> list[Path]:
    """Rank 0 lists the candidates (and checks the directory is writable); every rank gets them.
    Storage failures (unreadable, read-only, full) are named, on every rank."""
    result: tuple[str, object] | None = None
    if comm.rank == 0:
        try:
            probe_writable(root)
            remove_stale_tmp(root)
            paths, warnings = candidates(root)
            for w in warnings:
                log.warning("%s", w)
            result = ("ok", [str(p) for p in paths])
        except BaseException as e:
            result = ("error", _error_record(classify(e, "opening the checkpoint directory", root)))
    result = comm.broadcast(result)
    assert result is not None
    if result[0] == "error":
        _raise_record(result[1])  # type: ignore[arg-type]
    return [Path(p) for p in result[1]]  # type: ignore[union-attr]


def verify(comm: Comm, path: Path) -> str | None:
    """Why ``path`` fails verification (None: valid), agreed by every rank.  Each rank hashes its
    share of the files; an unreadable file is a storage failure (raised), not damage."""
    head: tuple[str, object] = ("unread", None)
    if comm.rank == 0:
        try:
            head = ("table", read_manifest(path))
        except ManifestError as e:
            head = ("why", str(e))
        except OSError as e:
            head = ("error", _error_record(classify(e, f"reading checkpoint {path}", path)))
    kind, value = comm.broadcast(head)
    if kind == "error":
        _raise_record(value)
    if kind == "why":
        return str(value)
    table: dict[str, FileRecord] = value
    mine: tuple[str, object] = ("ok", None)
    try:
        mine = ("why", check_files(path, table, share(table, comm.rank, comm.world)))
    except OSError as e:
        mine = ("error", _error_record(classify(e, f"reading checkpoint {path}", path)))
    verdicts = comm.all_gather(mine)
    for kind, value in verdicts:
        if kind == "error":
            _raise_record(value)  # type: ignore[arg-type]
    whys = [value for _, value in verdicts if value]
    if whys:
        return str(whys[0])
    why = structure_problem(path) if comm.rank == 0 else None
    return comm.broadcast(why)  # type: ignore[no-any-return]


def choose(comm: Comm, root: Path, on_no_valid: str) -> Choice:
    """The newest valid checkpoint of this job, after moving damaged newer ones aside."""
    paths = plan(comm, root)
    choice = Choice()
    for path in paths:
        why = verify(comm, path)
        if why is None:
            choice.path = path
            break
        if comm.rank == 0:
            log.error("checkpoint %s failed verification: %s; falling back to the previous committed "
                      "checkpoint", path, why)
        choice.damaged.append((path, why))
    if choice.path is None and choice.damaged:
        listing = "; ".join(f"{p.name}: {why}" for p, why in choice.damaged)
        if on_no_valid != "restart":
            raise NoValidCheckpointError(
                f"{root} holds {len(choice.damaged)} checkpoint(s) and none is valid ({listing}); nothing "
                "was overwritten. Restore them from a backup, delete them, or set checkpoint.onNoValid: "
                "restart to start again from step 0 (the damaged ones are then kept aside)"
            )
        if comm.rank == 0:
            log.warning("no valid checkpoint in %s (%s); checkpoint.onNoValid=restart: starting from step 0",
                        root, listing)
    set_aside(comm, choice.damaged)
    return choice


def set_aside(comm: Comm, damaged: list[tuple[Path, str]]) -> None:
    """Rank 0 renames damaged checkpoints to ``<name>.damaged-<time>``: never read again, never
    overwritten by a later save of the same step, never deleted by the trainer."""
    if comm.rank == 0:
        for path, _why in damaged:
            try:
                target = quarantine(path)
                log.warning("moved the damaged checkpoint %s to %s (kept for inspection; delete it when done)",
                            path, target)
            except OSError as e:
                log.warning("could not move the damaged checkpoint %s aside: %s", path, e)
    comm.barrier()
