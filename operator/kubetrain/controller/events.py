"""Events off the critical path, aggregated like client-go's event recorder.

A pass hands its Events to `EventRecorder.record` (no I/O, never blocks) and goes on; one
background task posts them. The same Event (object, type, reason, message) seen again within
`window` seconds is not posted again: the existing Event's `count` and `lastTimestamp` are
patched instead, so a flapping job makes one Event with a count rather than thousands of
objects. The memory of posted Events is bounded (`max_keys`, least recently used first).
An Event that cannot be posted is logged and dropped: the decision it reports is in the status.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubetrain.controller.kubeio import ApiError

log = logging.getLogger("kubetrain.operator")
AggKey = tuple[str, str, str, str]  # (object uid, type, reason, message)


@dataclass
class _Posted:
    namespace: str
    name: str
    count: int
    at: float


@dataclass(frozen=True)
class Pending:
    obj: dict[str, Any]  # the involved object (apiVersion, kind, metadata)
    type: str
    reason: str
    message: str
    now: str


# (pending, count or None) -> the posted Event's (namespace, name); count None means create.
Poster = Callable[[Pending, "tuple[str, str, int] | None"], Awaitable["tuple[str, str]"]]


class EventRecorder:
    def __init__(self, post: Poster, window: float = 600.0, max_keys: int = 4096, max_queue: int = 10000) -> None:
        self._post = post
        self.window, self.max_keys = window, max_keys
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue(max_queue)
        self._posted: collections.OrderedDict[AggKey, _Posted] = collections.OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.aggregated = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-recorder")

    def record(self, obj: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        try:
            self._queue.put_nowait(Pending(obj, type_, reason, message[:1024], now))
        except asyncio.QueueFull:
            self.dropped += 1  # an Event storm: the status still holds every decision

    async def flush(self) -> None:
        """Wait until every Event recorded so far was handled (tests, shutdown)."""
        await self._queue.join()

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item is not None:
                    await self._one(item)
            except Exception as e:
                meta = item.obj.get("metadata") or {} if item is not None else {}
                log.warning("could not post Event %s for %s/%s: %s", item.reason if item else "?",
                            meta.get("namespace"), meta.get("name"), e)
            finally:
                self._queue.task_done()

    async def _one(self, item: Pending) -> None:
        meta = item.obj.get("metadata") or {}
        key = (str(meta.get("uid", "")), item.type, item.reason, item.message)
        seen = self._posted.get(key)
        now = time.monotonic()
        if seen is not None and now - seen.at < self.window:
            try:
                await self._post(item, (seen.namespace, seen.name, seen.count + 1))
            except ApiError as e:
                if e.status != 404:
                    raise
                seen = None  # the Event expired on the server: post it again
            else:
                seen.count += 1
                seen.at = now
                self._posted.move_to_end(key)
                self.aggregated += 1
                return
        namespace, name = await self._post(item, None)
        self._posted[key] = _Posted(namespace, name, 1, now)
        self._posted.move_to_end(key)
        while len(self._posted) > self.max_keys:
            self._posted.popitem(last=False)

    def forget(self, uid: str) -> None:
        """Drop the memory of a deleted object's Events."""
        for key in [k for k in self._posted if k[0] == uid]:
            del self._posted[key]
