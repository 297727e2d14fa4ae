"""The launcher <-> worker protocol: where a worker leaves its failure record and its markers,
and where the pod's termination log is.

Both sides import this module and nothing of each other: the worker (``cli``, ``checkpoint``)
writes, the launcher (``launch``) reads. Environment names come from ``kubetrain.api.constants``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from kubetrain.api import constants as k

log = logging.getLogger("kubetrain_trainer")

# The message in a failure record is capped: the kubelet keeps at most 4096 bytes of the
# termination log, and a cut JSON line would lose the reason too.
MAX_MESSAGE_CHARS = 3000
# The whole record, encoded, stays under this (non-ASCII characters grow when escaped).
MAX_RECORD_BYTES = 3800
# Bytes reserved in the termination log at start-up, so that the final record can be written over
# them in place even when the disk holding it is full by then.
RESERVED_BYTES = 4096


def launch_dir_from_env() -> Path | None:
    value = os.environ.get(k.ENV_LAUNCH_DIR)
    return Path(value) if value else None


def termination_log_path() -> Path | None:
    """``$KUBETRAIN_TERMINATION_LOG``, else ``/dev/termination-log`` when it exists (in a pod)."""
    explicit = os.environ.get(k.ENV_TERMINATION_LOG)
    if explicit:
        return Path(explicit)
    default = Path(k.TERMINATION_LOG)
    return default if default.exists() else None


def capped_json(record: dict[str, Any], limit: int = MAX_RECORD_BYTES) -> str:
    """``record`` as one JSON line of at most ``limit`` bytes: the message is cut (its END kept,
    where the cause is), never the reason or the step."""
    record = dict(record)
    message = " ".join(str(record.get("message") or "").split())[-MAX_MESSAGE_CHARS:]
    while True:
        record["message"] = message
        text = json.dumps(record) + "\n"
        if len(text.encode()) <= limit or not message:
            return text
        message = "..." + message[max(4, len(message) // 4):]


def reserve(path: Path) -> None:
    """Pre-allocate ``path`` (a regular file) with blanks, so ``write_in_place`` needs no new
    blocks later (best effort)."""
    try:
        if path.is_char_device():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(b" " * (RESERVED_BYTES - 1) + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log.warning("cannot reserve %s: %s", path, exc)


def write_in_place(path: Path, text: str) -> bool:
    """Overwrite ``path`` from its start without allocating (a reserved file), then cut it to
    length.  False when that failed."""
    data = text.encode()
    try:
        if path.is_char_device() or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return True
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        return False


def _write_json(path: Path, record: dict[str, Any]) -> None:
    text = capped_json(record)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_char_device() or not path.parent.is_dir():
            path.write_text(text)
            return
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        write_in_place(path, text)  # no room for a temporary file: a reserved one may still take it


def write_failure(run_dir: Path | None, rank: int, reason: str, message: str, step: int | None) -> None:
    """The worker's ``{reason, message, step}``: to the termination log, the run dir and the launcher."""
    record = {"reason": reason, "message": message, "step": step}
    targets: list[Path] = []
    term = termination_log_path()
    if term is not None:
        targets.append(term)
    if run_dir is not None:
        targets.append(run_dir / "failures" / f"rank{rank}.json")
    launch_dir = launch_dir_from_env()
    if launch_dir is not None:
        targets.append(launch_dir / f"failure-rank{rank}.json")
    for path in targets:
        _write_json(path, record)


def write_marker(launch_dir: Path | None, kind: str, rank: int, record: dict[str, Any]) -> None:
    """``<launch dir>/<kind>-rank<R>.json`` for the launcher (no-op outside it)."""
    if launch_dir is None:
        return
    _write_json(launch_dir / f"{kind}-rank{rank}.json", record)
