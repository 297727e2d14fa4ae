"""One run per run directory: an flock on ``<run dir>/.kubetrain.lock``, released by the kernel
when its holder dies (torch-free: ``kubetrain local`` takes it before any worker starts).

Processes of the SAME run share the directory (the launchers of a multi-pod job on one volume,
``kubetrain local`` and the launchers it starts); another run is refused at once, with the
holder's PID and host.  Who belongs to the run is the lock id: ``$KUBETRAIN_RUN_LOCK_ID``, else
torchrun's ``PET_RDZV_ID`` (the job's uid in pods).

Protocol (every step under an exclusive flock on ``.kubetrain.lock.meta``, held for microseconds):
if nobody holds ``.kubetrain.lock`` (an exclusive try-lock succeeds) the caller becomes its owner
and records ``{id, pid, host}`` in it; if someone holds it and the recorded id is the caller's,
the caller joins; otherwise it is refused.  Every holder keeps a shared lock while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from kubetrain.api.constants import ENV_RUN_LOCK_ID, RUN_LOCK_FILE


class RunDirBusy(RuntimeError):
    def __init__(self, run_dir: Path, owner: dict[str, Any]) -> None:
        self.owner = owner
        pid, host = owner.get("pid"), owner.get("host")
        super().__init__(
            f"run directory {run_dir} is in use by another run (pid {pid} on {host}, "
            f"run {owner.get('id')!r}, since {owner.get('since')}); stop that run first, or use another "
            "run directory"
        )


def lock_id() -> str:
    return os.environ.get(ENV_RUN_LOCK_ID) or os.environ.get("PET_RDZV_ID") or f"pid-{os.getpid()}"


class RunLock:
    """Holds the run directory while alive (``release()`` or process exit lets go)."""

    def __init__(self, run_dir: Path, fd: int, owner: dict[str, Any]) -> None:
        self.run_dir, self.fd, self.owner = run_dir, fd, owner

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _read_owner(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode() or "{}")
    except ValueError:
        owner = {}
    return owner if isinstance(owner, dict) else {}


def _write_owner(fd: int, owner: dict[str, Any]) -> None:
    data = json.dumps(owner).encode() + b"\n"
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.ftruncate(fd, len(data))


def acquire(run_dir: Path, ident: str | None = None) -> RunLock:
    """Take (or join) the run directory for run ``ident`` (default ``lock_id()``); raises
    RunDirBusy when another run holds it, OSError when the directory cannot be used at all."""
    import time

    ident = ident or lock_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_fd = os.open(run_dir / f"{RUN_LOCK_FILE}.meta", os.O_RDWR | os.O_CREAT, 0o644)
    fd = os.open(run_dir / RUN_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(meta_fd, fcntl.LOCK_EX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owner = {"id": ident, "pid": os.getpid(), "host": socket.gethostname(),
                     "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_owner(fd, owner)
        except BlockingIOError:
            owner = _read_owner(fd)
            if owner.get("id") != ident:
                raise RunDirBusy(run_dir, owner) from None
        fcntl.flock(fd, fcntl.LOCK_SH)  # under the meta lock: nobody can slip in between
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(meta_fd)  # releases the meta lock
    return RunLock(run_dir, fd, owner)
