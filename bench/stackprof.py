"""A poor man's py-spy: run a module with a thread that samples every thread's Python stack.

    python bench/stackprof.py OUT.txt [--interval 0.005] -m kubetrain operator -n NS ...

At exit (normal, SIGTERM handled by the program, or SIGINT) OUT.txt gets, over all samples of all
threads except the sampler: the functions with the most samples on the stack (inclusive) and at
the top (self), per thread-name prefix, and idle stacks (waiting in select/lock/queue) separated
out.  Sampling needs the GIL, so a thread stuck in C without releasing it delays samples rather
than showing up: good enough to see where the Python time goes.
"""

from __future__ import annotations

import atexit
import collections
import re
import runpy
import sys
import threading
import time
from types import FrameType

IDLE = re.compile(r"(threading\.py:wait|selectors\.py:select|queue\.py:get|base_events\.py:_run_once"
                  r"|socket\.py:readinto|ssl\.py:read|ssl\.py:recv_into|thread\.py:_worker)$")


def _where(frame: FrameType) -> str:
    code = frame.f_code
    name = code.co_filename
    for marker in ("site-packages/", "lib/python3", "/operator/", "/trainer_image/"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{code.co_name}"


class Sampler:
    def __init__(self, out: str, interval: float) -> None:
        self.out, self.interval = out, interval
        self.inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.self_: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter[str] = collections.Counter()
        self.stacks: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(collections.Counter)
        self.idle: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="stackprof", daemon=True)
        self.started = time.monotonic()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = re.sub(r"[-_]?\d+$", "", names.get(ident, "?")).split(" ")[0]
                stack = []
                f: FrameType | None = frame
                while f is not None:
                    stack.append(_where(f))
                    f = f.f_back
                if not stack:
                    continue
                top = stack[0]
                if IDLE.search(top):
                    self.idle[kind] += 1
                    continue
                self.samples[kind] += 1
                self.self_[kind][top] += 1
                self.stacks[kind][tuple(stack[:14])] += 1
                for fn in set(stack):
                    self.inclusive[kind][fn] += 1

    def dump(self) -> None:
        self.stop.set()
        wall = time.monotonic() - self.started
        lines = [f"stackprof: {wall:.1f}s wall, interval {self.interval * 1e3:.0f} ms; "
                 "busy samples per thread kind (idle = blocked in select/lock/socket read)"]
        for kind, n in self.samples.most_common():
            lines.append(f"\n== {kind}: {n} busy samples (~{n * self.interval:.1f}s), "
                         f"{self.idle[kind]} idle")
            lines.append("  inclusive:")
            for fn, c in self.inclusive[kind].most_common(40):
                lines.append(f"    {c / n * 100:5.1f}%  {fn}")
            lines.append("  self:")
            for fn, c in self.self_[kind].most_common(20):
                lines.append(f"    {c / n * 100:5.1f}%  {fn}")
            lines.append("  top stacks (innermost first):")
            for stack, c in self.stacks[kind].most_common(12):
                lines.append(f"    {c / n * 100:5.1f}%  " + " < ".join(stack))
        with open(self.out, "w") as f:
            f.write("\n".join(lines) + "\n")


def main() -> None:
    args = sys.argv[1:]
    out = args.pop(0)
    interval = 0.005
    if args[0] == "--interval":
        interval = float(args[1])
        args = args[2:]
    if args[0] != "-m":
        sys.exit("usage: stackprof.py OUT [--interval S] -m MODULE ARGS...")
    module = args[1]
    sys.argv = [module, *args[2:]]
    sampler = Sampler(out, interval)
    atexit.register(sampler.dump)
    sampler.thread.start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
