"""Run `python -m kubetrain operator ...` with its API calls, work-queue adds and reconcile passes
timestamped (time.monotonic: CLOCK_MONOTONIC, comparable with the bench process's clock).

    python bench/optrace.py TRACE.jsonl -m kubetrain operator -n NS ...

One JSON line per event: {"t": start, "d": duration, "ev": "call"|"pass"|"add", ...}.  Only
wraps functions from the outside (kubeio.Kube.call, handlers.reconcile_key, WorkQueue.add); the
operator's code is unchanged.  Optionally also samples stacks (bench/stackprof.py) with --stacks.
"""

from __future__ import annotations

import functools
import json
import runpy
import sys
import threading
import time
from typing import Any


class Trace:
    """Records kept in memory (an append is all the traced code pays) and written by a thread of
    their own every 0.5 s, and at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._flusher, name="optrace", daemon=True).start()
        import atexit

        atexit.register(self.flush)

    def write(self, **rec: Any) -> None:
        self.records.append(rec)  # list.append is atomic under the GIL

    def flush(self) -> None:
        with self.lock:
            todo, self.records = self.records, []
            if todo:
                with open(self.path, "a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in todo))

    def _flusher(self) -> None:
        while True:
            time.sleep(0.5)
            self.flush()


def install(trace: Trace) -> None:
    from kubetrain.controller import handlers, kubeio, workqueue

    call = kubeio.Kube.call

    @functools.wraps(call)
    def traced_call(self: Any, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        t = time.monotonic()
        try:
            return call(self, method, path, *args, **kwargs)
        finally:
            trace.write(t=t, d=time.monotonic() - t, ev="call", method=method, path=path,
                        thread=threading.current_thread().name)

    kubeio.Kube.call = traced_call  # type: ignore[method-assign]

    reconcile_key = handlers.reconcile_key

    @functools.wraps(reconcile_key)
    async def traced_pass(rt: Any, key: Any) -> Any:
        t = time.monotonic()
        try:
            return await reconcile_key(rt, key)
        finally:
            trace.write(t=t, d=time.monotonic() - t, ev="pass", key="/".join(key))

    handlers.reconcile_key = traced_pass  # type: ignore[assignment]

    add = workqueue.WorkQueue.add

    def traced_add(self: Any, key: Any) -> None:
        trace.write(t=time.monotonic(), d=0.0, ev="add", key="/".join(key) if isinstance(key, tuple) else str(key))
        add(self, key)

    workqueue.WorkQueue.add = traced_add  # type: ignore[method-assign]


def main() -> None:
    args = sys.argv[1:]
    out = args.pop(0)
    stacks = None
    if args and args[0] == "--stacks":
        stacks = args[1]
        args = args[2:]
    if args[:1] != ["-m"]:
        sys.exit("usage: optrace.py TRACE.jsonl [--stacks OUT] -m MODULE ARGS...")
    if stacks:
        import atexit

        from stackprof import Sampler

        sampler = Sampler(stacks, 0.005)
        atexit.register(sampler.dump)
        sampler.thread.start()
    if "--kubeconfig" in args:  # kubetrain's own rule: set before kopf and the client are imported
        import os

        os.environ["KUBECONFIG"] = args[args.index("--kubeconfig") + 1]
    install(Trace(out))
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
