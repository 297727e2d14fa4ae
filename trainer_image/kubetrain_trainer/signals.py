"""Stop requests (SIGTERM / SIGINT) in a training process.

The launcher's elastic agent SIGTERMs the workers when the pod is asked to stop (preemption,
``kubectl delete``, Ctrl-C in ``kubetrain local``) and when the worker group must restart for a
membership change.  A handler here only records the request; the engine sums a per-rank "stop
requested" flag into the all-reduce every step already makes, so all ranks see the same value after
the same step, finish it, checkpoint (``checkpoint.saveTimeoutSeconds`` bounds the save) and exit 75.
A second SIGTERM changes nothing (the agent may signal twice; it SIGKILLs when its wait is over).
A second SIGINT outside the launcher (a person at a terminal pressing Ctrl-C again) exits at once
with 130, without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from kubetrain.api.constants import ENV_LAUNCH_DIR

_requested_at: float | None = None  # time.monotonic() of the first stop signal
_signal_name: str | None = None
_listeners: list[Any] = []


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _requested_at, _signal_name
    # Runs in the main thread between bytecodes (no lock: a second signal may interrupt this one).
    again = _requested_at is not None
    if not again:
        _requested_at = time.monotonic()
        _signal_name = signal.Signals(signum).name
    if again and signum == signal.SIGINT and not os.environ.get(ENV_LAUNCH_DIR):
        sys.stderr.write("second interrupt: exiting without a checkpoint\n")
        sys.stderr.flush()
        os._exit(130)
    for listener in list(_listeners):
        listener()


def install() -> None:
    """Record SIGTERM and SIGINT instead of dying (call from the main thread, early)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


def on_request(listener: Any) -> None:
    """Call ``listener()`` (in the signal handler: keep it trivial) on every stop signal; at once if
    one already arrived."""
    _listeners.append(listener)
    if _requested_at is not None:
        listener()


def requested() -> bool:
    return _requested_at is not None


def requested_at() -> float | None:
    return _requested_at


def signal_name() -> str | None:
    return _signal_name


def reset() -> None:
    """Forget requests and listeners (tests)."""
    global _requested_at, _signal_name
    _requested_at = None
    _signal_name = None
    _listeners.clear()
