"""Polling the workers' /progress endpoints, beside (never inside) the reconcile passes.

Local rank 0 of every worker pod serves /progress (JSON) on the container port named `metrics`.
The poller asks the lowest-index Ready pod of the current generation of each job every
`interval` seconds, keeps the latest answer in memory and asks for a pass, which writes it to
status.progress. A pod that does not answer within the timeout leaves the last reading (and
its time) in place; a slow pod never delays a pass, nor the other jobs' polls. What a pod answers
is the job author's to decide, so `fetch` follows no redirect, wants `application/json` and reads
at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from kubetrain.api.constants import METRICS_PORT
from kubetrain.api.progress import ProgressReport
from kubetrain.controller import names as n
from kubetrain.controller.observed import ProgressReading

log = logging.getLogger("kubetrain.controller.progress")
K = TypeVar("K", bound=Hashable)
MAX_CONCURRENT = 32
# A report is a few hundred bytes; anything past this is not one (and must not fill our memory).
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Target:
    pod: str
    url: str


def target_of(pods: list[dict[str, Any]], generation: int, container: str = "trainer") -> Target | None:
    """The lowest-index Ready, not deleting pod of `generation` with an IP, and its /progress URL."""
    candidates = []
    for p in pods:
        meta, status = p.get("metadata") or {}, p.get("status") or {}
        labels = meta.get("labels") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if meta.get("deletionTimestamp") or not ready or not status.get("podIP"):
            continue
        if labels.get(n.LABEL_GENERATION) != str(generation):
            continue
        try:
            index = int(labels.get(n.LABEL_INDEX, ""))
        except ValueError:
            continue
        candidates.append((index, p))
    if not candidates:
        return None
    _, pod = min(candidates, key=lambda c: c[0])
    port = METRICS_PORT
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            port = next((pt["containerPort"] for pt in c.get("ports") or [] if pt.get("name") == "metrics"), port)
    host = pod["status"]["podIP"]
    host = f"[{host}]" if ":" in host else host
    return Target(pod=pod["metadata"]["name"], url=f"http://{host}:{port}/progress")


async def fetch(
    session: aiohttp.ClientSession, url: str, timeout: float, max_bytes: int = MAX_BODY_BYTES,
) -> ProgressReport | None:
    """The report at `url`, or None (unreachable, slow, redirected, too big, not JSON, not a report).

    The worker's image is the job author's code, so the answer is treated as hostile: no
    redirect is followed (a 3xx would make the operator fetch any URL it can reach), the body
    must be declared `application/json` and is read only up to `max_bytes` (one byte more
    proves it too big, without reading the rest), and `timeout` bounds the whole exchange,
    a slow drip included."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as resp:
            if resp.status != 200 or resp.content_type != "application/json":
                return None
            if resp.content_length is not None and resp.content_length > max_bytes:
                return None
            body = bytearray()
            while len(body) <= max_bytes:
                chunk = await resp.content.read(max_bytes + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            if len(body) > max_bytes:
                return None
            data = json.loads(body.decode(resp.charset or "utf-8"))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, LookupError):
        return None
    return ProgressReport.from_answer(data)


class ProgressPoller(Generic[K]):
    def __init__(
        self,
        interval: float,
        on_reading: Callable[[K], None],
        clock: Callable[[], dt.datetime],
        timeout: float | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout if timeout is not None else min(3.0, interval)
        self.on_reading, self.clock = on_reading, clock
        self.targets: dict[K, Target] = {}
        self.readings: dict[K, ProgressReading] = {}
        self._task: asyncio.Task[None] | None = None

    def set_target(self, key: K, target: Target | None) -> None:
        if target is None:
            self.targets.pop(key, None)
        else:
            self.targets[key] = target

    def forget(self, key: K) -> None:
        self.targets.pop(key, None)
        self.readings.pop(key, None)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        limit = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(key: K, target: Target) -> None:
            async with limit:
                data = await fetch(session, target.url, self.timeout)
            if data is None:
                log.debug("no progress from %s (%s)", target.pod, target.url)
                return
            self.readings[key] = ProgressReading(data=data, read_at=self.clock(), pod=target.pod)
            self.on_reading(key)

        await asyncio.gather(*(one(k, t) for k, t in list(self.targets.items())))

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = asyncio.get_running_loop().time()
                await self.poll_once(session)
                elapsed = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.0, self.interval - elapsed))

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="progress-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
