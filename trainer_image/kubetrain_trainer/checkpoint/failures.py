"""Checkpoint failures, named (torch-free).

torch's ``CheckpointException`` derives from ``BaseException`` and wraps each rank's exception
(``failures: {rank: exception or WrappedException}``); an ``except Exception`` never sees it.  The
save and load paths catch ``BaseException`` (re-raising KeyboardInterrupt, SystemExit and
GeneratorExit) and ``classify`` turns what they caught into one of these:

============================  =====  =========================================================
reason                        exit   what
============================  =====  =========================================================
CheckpointStorageFull         65     no space left (ENOSPC, EDQUOT) — the previous ``latest``
                                     stays; free space, then resume
CheckpointStorageReadOnly     65     read-only file system (EROFS)
CheckpointPermissionDenied    65     the trainer may not read or write there (EACCES, EPERM)
NoValidCheckpoint             65     checkpoints exist but none passes verification (or an
                                     ``initFrom`` does not fit this model): nothing overwritten
NonFiniteState                65     the state to save is not finite: never committed
CheckpointError               1      anything else (retryable: storage may come back)
============================  =====  =========================================================
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from ..errors import EXIT_MODEL_OR_DATA, EXIT_RETRYABLE, TrainerError

MAX_DETAIL = 600


class CheckpointError(TrainerError):
    """A checkpoint could not be written or read (retryable: storage may come back)."""

    exit_code = EXIT_RETRYABLE
    reason = "CheckpointError"


class CheckpointStorageError(CheckpointError):
    """The checkpoint storage refuses (full, read-only, no permission): permanent until someone acts."""

    exit_code = EXIT_MODEL_OR_DATA

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoValidCheckpointError(TrainerError):
    exit_code = EXIT_MODEL_OR_DATA
    reason = "NoValidCheckpoint"


class NonFiniteStateError(TrainerError):
    exit_code = EXIT_MODEL_OR_DATA
    reason = "NonFiniteState"


STORAGE_REASONS = {
    errno.ENOSPC: ("CheckpointStorageFull", "no space left on the checkpoint storage"),
    errno.EDQUOT: ("CheckpointStorageFull", "the checkpoint storage's quota is exhausted"),
    errno.EROFS: ("CheckpointStorageReadOnly", "the checkpoint storage is read-only"),
    errno.EACCES: ("CheckpointPermissionDenied", "permission denied on the checkpoint storage"),
    errno.EPERM: ("CheckpointPermissionDenied", "operation not permitted on the checkpoint storage"),
}

PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it wraps (CheckpointException's per-rank failures, WrappedException's
    original) and its __cause__/__context__ chain, depth first, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            for v in failures.values():  # an exception, or (exception, stack summary)
                for candidate in (v, *(v if isinstance(v, tuple) else ()), getattr(v, "exception", None)):
                    if isinstance(candidate, BaseException):
                        stack.append(candidate)
        inner = getattr(e, "exception", None)
        if isinstance(inner, BaseException):
            stack.append(inner)
        for link in (e.__cause__, e.__context__):
            if link is not None:
                stack.append(link)


# DCP gathers each rank's failure by pickling it, which drops __cause__/__context__: an OSError
# that torch.save turned into a RuntimeError arrives without its errno, only its words.
_STRERRORS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
              errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied"}


def storage_errno(exc: BaseException, seen: list[OSError] | tuple[OSError, ...] = ()) -> int | None:
    """The storage errno behind ``exc``, or behind the write errors this process saw (``seen``)."""
    for e in [*causes(exc), *seen]:
        if isinstance(e, OSError) and e.errno in STORAGE_REASONS:
            return e.errno
    for e in causes(exc):
        try:
            text = str(e)
        except Exception:
            continue
        for code, words in _STRERRORS.items():
            if words in text:
                return code
    return None


def short(exc: BaseException) -> str:
    """One line about ``exc`` (the innermost OSError if there is one), capped."""
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno is not None:
            text = f"{type(e).__name__}: [Errno {e.errno}] {e.strerror}" + (f": {e.filename}" if e.filename else "")
            return text[:MAX_DETAIL]
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:  # CheckpointException: each rank's error, no traceback
        parts = []
        for rank, value in sorted(failures.items()):
            inner = value[0] if isinstance(value, tuple) and value else value
            parts.append(f"rank {rank}: {type(inner).__name__}: {' '.join(str(inner).split())}")
        return "; ".join(parts)[:MAX_DETAIL]
    try:
        text = str(exc)
    except Exception:  # a malformed exception cannot even print itself
        text = repr(exc.args)
    first = " ".join(text.split())
    return f"{type(exc).__name__}: {first}"[:MAX_DETAIL]


def classify(exc: BaseException, doing: str, where: object, seen: list[OSError] | tuple[OSError, ...] = (),
             code: int | None = None) -> CheckpointError:
    """What a failure of ``doing`` (e.g. "saving the checkpoint of step 40") at ``where`` means.
    ``seen``: OSErrors this process caught on the way (their errno); ``code``: an errno another rank
    saw (the ranks agree on one)."""
    if isinstance(exc, PASS_THROUGH):
        raise exc
    code = code if code is not None else storage_errno(exc, seen)
    if code is not None:
        reason, what = STORAGE_REASONS[code]
        mine = next((e for e in [*causes(exc), *seen] if isinstance(e, OSError) and e.errno == code), None)
        detail = short(mine) if mine is not None else f"[Errno {code}] {os.strerror(code)}"
        return CheckpointStorageError(reason, f"{doing} failed: {what} ({where}): {detail}")
    return CheckpointError(f"{doing} failed ({where}): {short(exc)}")
