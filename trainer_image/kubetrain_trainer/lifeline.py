"""Processes that die with their parent: ``PR_SET_PDEATHSIG`` plus a parent-alive check.

``kubetrain local`` starts each launcher with ``die_with_parent`` in its ``preexec_fn`` (SIGTERM:
the launcher stops its workers after a checkpoint); the launcher gives its workers its own PID in
``$KUBETRAIN_LAUNCHER_PID`` and each worker arms SIGKILL on its parent's death at start-up (a
launcher that died abruptly has nobody left to coordinate a checkpoint).  The check after arming
closes the race of a parent that died before the signal was armed; ``parent_alive`` lets a loop
notice a lost parent too (e.g. a parent that was itself re-parented).  Linux only; elsewhere a
no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> None:
    """Receive ``sig`` when the parent dies; exit at once if it already has (safe in preexec_fn)."""
    _prctl_pdeathsig(sig)
    if os.getppid() != expected_parent:
        os._exit(128 + int(sig))


def parent_alive(expected_parent: int) -> bool:
    return os.getppid() == expected_parent
