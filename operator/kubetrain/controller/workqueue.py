"""A work queue of job keys, in the manner of client-go's: a key is handed to one worker at a
time, a key added while in work is handed out again when that work is done (so no event is
ever lost and no job is reconciled twice at once), and delayed adds keep only the earliest
pending time per key. Also a per-key exponential retry delay for failed passes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._ready: collections.deque[K] = collections.deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K) -> None:
        if self._closed:
            return
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._wakeup.set()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds, unless an earlier add is already pending."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        """The next key; the caller must call done(key) when finished with it."""
        while not self._ready:
            if self._closed:
                raise QueueClosed
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._ready.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def forget(self, key: K) -> None:
        """Drop pending delayed adds of a key (its job is gone)."""
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    def close(self) -> None:
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._wakeup.set()


class QueueClosed(Exception):
    pass


class RetryDelays(Generic[K]):
    """Per-key exponential delay for passes that raised: base·2^n, capped; reset on success."""

    def __init__(self, base: float = 0.5, cap: float = 60.0) -> None:
        self.base, self.cap = base, cap
        self._failures: dict[K, int] = {}

    def next(self, key: K) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        return float(min(self.cap, self.base * 2**n))

    def reset(self, key: K) -> None:
        self._failures.pop(key, None)
