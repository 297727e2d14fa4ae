"""The checkpoint directory's layout and its file operations (torch-free).

    latest                       the committed checkpoint's name, written LAST (temp + fsync + rename)
    step-00000100/               one directory per committed step (manifest.json lists its files)
    step-00000200.tmp-1a2b3c4d/  a save in flight (or killed): never read, removed at the next start
    step-00000300.damaged-<t>/   a checkpoint that failed verification, moved aside (never read,
                                 never deleted by the trainer: delete it yourself once inspected)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from kubetrain.api import constants as k

log = logging.getLogger("kubetrain_trainer")

LATEST = "latest"
META_FILE = "kubetrain.json"
DCP_METADATA = ".metadata"
STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_root(run_dir: Path) -> Path:
    """``$KUBETRAIN_CHECKPOINT_DIR``, else ``<run dir>/checkpoints``."""
    explicit = os.environ.get(k.ENV_CHECKPOINT_DIR)
    return Path(explicit) if explicit else run_dir / "checkpoints"


def fsync_dir(path: Path) -> None:
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
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((path / META_FILE).read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise ValueError(f"{META_FILE} has no integer step")
    return meta


def list_root(root: Path) -> list[Path]:
    """The entries of the checkpoint root; [] when it does not exist.  Any other OSError (permission,
    I/O) propagates: an unreadable directory is not an empty one."""
    try:
        return list(root.iterdir())
    except FileNotFoundError:
        return []


def committed_dirs(root: Path) -> list[tuple[int, Path]]:
    """``step-N`` directories (renamed into place, so complete unless damaged later), newest first."""
    out = []
    for p in list_root(root):
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def read_latest(root: Path) -> str | None:
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        return None
    return name if STEP_DIR.match(name) else None


def candidates(root: Path) -> tuple[list[Path], list[str]]:
    """Checkpoints to try, best first (``latest``, then the other committed ones, newest first), and
    warnings about the pointer."""
    warnings: list[str] = []
    out: list[Path] = []
    name = read_latest(root)
    if name is not None:
        out.append(root / name)
    elif (root / LATEST).exists():
        warnings.append(f"{root / LATEST} does not name a checkpoint; looking for the newest valid one")
    out += [p for _, p in committed_dirs(root) if p.name != name]
    return out, warnings


def remove_stale_tmp(root: Path) -> None:
    """Directories of saves that never committed (the process died mid-save)."""
    for p in list(root.glob("step-*.tmp-*")) + list(root.glob(".trash-*")):
        log.warning("removing %s: a checkpoint save that never committed", p)
        shutil.rmtree(p, ignore_errors=True)


def quarantine(path: Path) -> Path:
    """Move a checkpoint that failed verification aside, under a name nothing reads or deletes."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}")
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def prune(root: Path, keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """Keep the newest ``keep`` committed checkpoints, never the one ``latest`` names nor any in
    ``protect`` (the newest checkpoint verified by reading it back).  Returns what was removed."""
    keepers = {read_latest(root), *protect}
    removed = []
    for _, path in committed_dirs(root)[keep:]:
        if path.name not in keepers:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def install(tmp: Path, root: Path, name: str) -> Path:
    """Rename a finished save into place and point ``latest`` at it (rank 0)."""
    final = root / name
    if final.exists():  # an older copy of the same step (resumed from before it; it was verified
        trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"  # or moved aside as damaged first)
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(root)
    write_atomic(root / LATEST, name + "\n")
    return final


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def probe_writable(root: Path) -> None:
    """Create, fsync and remove a small file in ``root`` (raises OSError: read-only, no permission,
    no space) — at start-up, before any training step is spent."""
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".probe-{uuid.uuid4().hex[:8]}"
    try:
        with probe.open("wb") as f:
            f.write(b"kubetrain\n")
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)
