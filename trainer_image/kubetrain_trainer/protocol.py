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


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_char_device() or not path.parent.is_dir():
            path.write_text(json.dumps(record) + "\n")
            return
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:  # no room for a temporary file: a direct write may still fit
            path.write_text(json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def write_failure(run_dir: Path | None, rank: int, reason: str, message: str, step: int | None) -> None:
    """The worker's ``{reason, message, step}``: to the termination log, the run dir and the launcher."""
    record = {"reason": reason, "message": message[-MAX_MESSAGE_CHARS:], "step": step}
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
