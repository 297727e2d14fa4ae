"""A client-side token bucket (client-go's `--kube-api-qps` / `--kube-api-burst`): every API
call of the operator takes a token; tokens refill at `qps` per second up to `burst`. It
protects the API server from a storm of passes without the 20-QPS wall of client-go's default:
a burst covers a whole large gang's creates, the steady rate many jobs' passes. Thread-safe
(the API calls run in a thread pool); `qps <= 0` disables it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.qps, self.burst = float(qps), max(1, int(burst))
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting for tokens, all calls together

    def _reserve(self) -> float:
        """Take a token (possibly going negative: a reservation) and return how long to wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def acquire(self) -> float:
        """Block until a token is available; return the seconds waited."""
        if self.qps <= 0:
            return 0.0
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
            with self._lock:
                self.waited += wait
        return wait
