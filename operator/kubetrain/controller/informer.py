"""A list-and-watch cache of the operator's children (pods, Services, ConfigMaps), client-go's
informer in small: a LIST with a label selector (the server filters: only kubetrain's objects
travel), then a WATCH from the list's resourceVersion; a 410 Gone (the watch fell too far
behind) or a broken stream relists. Runs in a thread (the API client blocks); every change is
handed to `on_change(type, obj)` in that thread (the caller hops to its event loop).

A reconcile pass reads a job's children here instead of listing them: no read per pass. Until
the first LIST has completed the cache is not `synced`, and passes wait for it (a pass on a
partial cache could take existing workers for missing ones). A cache that trails the API
server is safe for this operator: every child's name is decided by the observed state, so a
pass on a stale view asks for what exists already (409) or is gone already (404).

Bounded and lean: the store holds the live objects of the selector and nothing else (a DELETED
event drops the object), each cut down by `slim` to what the reconciler reads (no managedFields;
a ConfigMap without its data, a pod's spec reduced to its node and container ports), like
client-go's cache transforms.

Deletions win over our own writes' answers: a DELETE's response (the object, Terminating) can
come back after the watch already delivered its DELETED event (a pod deleted with grace 0 goes at
once), so the uids the watch saw deleted are remembered (the last TOMBSTONES of them) and
`observe` never puts such an object back: a stale Terminating pod would otherwise stay in the
cache forever, and a job would wait for a worker that is long gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from kubetrain.controller.kubeio import ApiError, Kube

log = logging.getLogger("kubetrain.operator.informer")
TOMBSTONES = 4096  # uids of deleted objects remembered (a few hundred bytes each at most)
WATCH_SECONDS = 300


class Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


class Informer:
    def __init__(
        self, kube: Kube, path: str, selector: str, on_change: Callable[[str, dict[str, Any]], None],
        index_label: str,
    ) -> None:
        self.kube, self.path, self.selector, self.on_change = kube, path, selector, on_change
        self.index_label = index_label
        # (namespace, label value) -> {name: object}
        self._by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0
        self._deleted: OrderedDict[str, None] = OrderedDict()  # uids the watch saw deleted

    # ------------------------------------------------------------------ reading

    def get(self, namespace: str, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return list((self._by_key.get((namespace, key)) or {}).values())

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_key.values())

    # ------------------------------------------------------------------ writing

    def _key(self, obj: dict[str, Any]) -> tuple[tuple[str, str], str]:
        meta = obj.get("metadata") or {}
        return (str(meta.get("namespace", "")), str((meta.get("labels") or {}).get(self.index_label, ""))), \
            str(meta.get("name", ""))

    def _put(self, obj: dict[str, Any]) -> None:
        key, name = self._key(obj)
        with self._lock:
            self._by_key.setdefault(key, {})[name] = obj

    def _drop(self, obj: dict[str, Any]) -> None:
        key, name = self._key(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        with self._lock:
            if uid:
                self._deleted[uid] = None
                while len(self._deleted) > TOMBSTONES:
                    self._deleted.popitem(last=False)
            objs = self._by_key.get(key)
            if objs is not None:
                objs.pop(name, None)
                if not objs:
                    del self._by_key[key]

    def observe(self, obj: dict[str, Any]) -> None:
        """Our own write's answer (a created or deleted object): taken at once, so that the next
        pass need not wait for the watch to bring it. The watch's later event replaces it."""
        obj = slim(obj)
        key, name = self._key(obj)
        with self._lock:
            if (obj.get("metadata") or {}).get("uid") in self._deleted:
                return  # the watch already saw it go: this answer is older than that
            cached = self._by_key.get(key, {}).get(name)
            if cached is None or _rv(obj) >= _rv(cached):
                self._by_key.setdefault(key, {})[name] = obj

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer{self.path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at the next event or timeout. The stream is not closed from here: closing an SSL
        socket that another thread is reading blocks on its lock. The thread is a daemon, so it
        never holds up the process's exit."""
        self._stop.set()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                rv = self._list()
                delay = 0.5
                while not self._stop.is_set():
                    rv = self._watch(rv)
            except Gone:
                self.relists += 1
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("%s: list/watch failed (%s); again in %.1fs", self.path, e, delay)
                self._stop.wait(delay)
                delay = min(30.0, delay * 2)

    def _list(self) -> str:
        out = self.kube.call("GET", self.path, query={"labelSelector": self.selector})
        kind = str(out.get("kind") or "").removesuffix("List")  # a list's items carry no kind
        items = [{**item, "kind": kind, "apiVersion": out.get("apiVersion")} for item in out.get("items") or []]
        fresh: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for obj in map(slim, items):
            key, name = self._key(obj)
            fresh.setdefault(key, {})[name] = obj
        with self._lock:
            old = self._by_key
            self._by_key = fresh
        # What vanished while we were not watching is a deletion; everything else a change.
        for key, objs in old.items():
            for name, obj in objs.items():
                if name not in fresh.get(key, {}):
                    self.on_change("DELETED", obj)
        for objs in fresh.values():
            for obj in objs.values():
                self.on_change("ADDED", obj)
        self.synced.set()
        return str((out.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, rv: str) -> str:
        query = {"labelSelector": self.selector, "watch": "true", "resourceVersion": rv,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        for event in self._stream(query):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind not in ("ERROR", "BOOKMARK"):
                obj = slim(obj)
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone
                raise ApiError(int(obj.get("code") or 500), json.dumps(obj))
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self._drop(obj)
            else:
                self._put(obj)
            self.on_change(str(kind), obj)
        return rv

    def _stream(self, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        resp = self.kube.stream("GET", self.path, query=query, read_timeout=WATCH_SECONDS + 30)
        buf = b""
        try:
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
              "deletionTimestamp", "creationTimestamp")


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the reconciler and the progress poller read of a child; the rest is not kept."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "metadata": {k: meta[k] for k in _META_KEYS if k in meta}}
    if obj.get("kind") == "Pod":
        spec = obj.get("spec") or {}
        out["spec"] = {"nodeName": spec.get("nodeName"),
                       "containers": [{"name": c.get("name"), "ports": c.get("ports") or []}
                                      for c in spec.get("containers") or []]}
        out["status"] = obj.get("status") or {}
    elif obj.get("kind") == "Workload":  # Kueue's: its pod sets, admission and conditions are read
        out["spec"], out["status"] = obj.get("spec") or {}, obj.get("status") or {}
    return out


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def wait_all(informers: list[Informer], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in informers)
