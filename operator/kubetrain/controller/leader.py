"""Leader election on a coordination.k8s.io/v1 Lease, in the manner of client-go's.

Every replica runs `LeaderElector.acquire()` before it starts watching: it takes the Lease
when nobody holds it or when the holder has not renewed it for `lease_seconds` (measured on
this replica's own clock from the moment it last saw the Lease change, so clock skew between
replicas does not matter). Writes carry the Lease's resourceVersion, so of two replicas that
try at once exactly one wins. The leader then renews every `retry_seconds` in a thread; if it
cannot renew for `renew_deadline_seconds` it has lost the Lease and must stop at once
(`on_lost`, by default exiting the process: its replacement starts as a standby), which is
before any standby may take over (renew deadline < lease duration).

A standby takes over within lease_seconds + retry_seconds of the leader's death (a SIGKILL
leaves no chance to release the Lease); a leader that stops cleanly releases it, and a standby
takes over within retry_seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubetrain.controller.kubeio import ApiError, Kube

log = logging.getLogger("kubetrain.operator.leader")
LEASE_API = "/apis/coordination.k8s.io/v1"


def _micro(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or os.uname().nodename}_{uuid.uuid4().hex[:8]}"


@dataclass
class LeaderElector:
    kube: Kube
    namespace: str
    name: str = "kubetrain-operator"
    identity: str = field(default_factory=default_identity)
    lease_seconds: float = 8.0
    renew_deadline_seconds: float = 6.0
    retry_seconds: float = 2.0
    on_lost: Callable[[], None] = field(default=lambda: os._exit(1))
    clock: Callable[[], float] = time.monotonic
    _observed: tuple[str, float] | None = None  # (resourceVersion, when we saw it change)
    _renewed: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    transitions: int = 0

    def __post_init__(self) -> None:
        if not self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("leader election needs retry < renew deadline < lease duration "
                             f"(got {self.retry_seconds}, {self.renew_deadline_seconds}, {self.lease_seconds})")

    @property
    def _path(self) -> str:
        return f"{LEASE_API}/namespaces/{quote(self.namespace, safe='')}/leases"

    def _get(self) -> dict[str, Any] | None:
        try:
            return dict(self.kube.call("GET", f"{self._path}/{quote(self.name, safe='')}"))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro(dt.datetime.now(dt.timezone.utc))
        old = (previous or {}).get("spec") or {}
        mine = old.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_seconds)),
            "acquireTime": old.get("acquireTime") if mine and old.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if mine or not old else 1),
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt, client-go's tryAcquireOrRenew: True when this replica holds the Lease."""
        lease = self._get()
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
            try:
                self.kube.call("POST", self._path, body)
            except ApiError as e:
                if e.status == 409:
                    return False
                raise
            return True
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        rv = str(meta.get("resourceVersion", ""))
        now = self.clock()
        if self._observed is None or self._observed[0] != rv:
            self._observed = (rv, now)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._observed[1] < duration:
            return False  # held, and renewed recently enough by our own clock
        lease["spec"] = self._spec(lease)
        try:
            self.kube.call("PUT", f"{self._path}/{quote(self.name, safe='')}", lease)
        except ApiError as e:
            if e.status == 409:  # someone else wrote it first
                return False
            raise
        if holder != self.identity:
            self.transitions += 1
        return True

    def acquire(self) -> None:
        """Block until this replica leads, then renew in the background."""
        log.info("waiting for the lease %s/%s", self.namespace, self.name, extra={"identity": self.identity})
        while not self._attempt():
            time.sleep(self.retry_seconds)
        self._renewed = self.clock()
        log.info("leading: took the lease %s/%s", self.namespace, self.name, extra={"identity": self.identity})
        self._thread = threading.Thread(target=self._renew_loop, name="leader-renew", daemon=True)
        self._thread.start()

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as e:  # the API server may be briefly away: try again
            log.warning("leader election: %s", e)
            return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.retry_seconds):
            if self._attempt():
                self._renewed = self.clock()
            elif self.clock() - self._renewed >= self.renew_deadline_seconds:
                log.error("lost the lease %s/%s: stopping", self.namespace, self.name)
                self.on_lost()
                return

    def release(self) -> None:
        """Clean stop: give the Lease up so that a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_seconds + 1)
        try:
            lease = self._get()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.kube.call("PUT", f"{self._path}/{quote(self.name, safe='')}", lease)
        except Exception as e:  # best effort: the Lease expires anyway
            log.warning("could not release the lease: %s", e)
