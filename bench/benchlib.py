"""Shared bits of the bench scripts: the result table, process memory, child-process hygiene.

Every bench prints one table: what was measured, the baseline measured in the same run, their
ratio, the target (DESIGN.md "Numbers we hold ourselves to") and PASS/MISS.  Not a test module.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "operator", REPO / "trainer_image"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@dataclass
class Row:
    metric: str
    measured: float
    baseline: float | None
    target: str  # e.g. "< 1 s", ">= 0.7 x"
    ok: bool | None  # None: informational, no target
    unit: str = ""
    paired: float | None = None  # a ratio computed otherwise (e.g. the median of per-round ratios)

    @property
    def ratio(self) -> float | None:
        if self.paired is not None:
            return self.paired
        if self.baseline is None or self.baseline == 0:
            return None
        return self.measured / self.baseline


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.3f}{unit}"


def print_table(title: str, rows: list[Row], notes: list[str] | None = None) -> None:
    head = ("metric", "measured", "baseline", "ratio", "target", "result")
    body = [
        (r.metric, _num(r.measured, r.unit), _num(r.baseline, r.unit),
         "-" if r.ratio is None else f"{r.ratio:.2f}", r.target or "-",
         "-" if r.ok is None else ("PASS" if r.ok else "MISS"))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    print(f"\n{title}")
    print(f"({machine()})")
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))
    print(line)
    print("-" * len(line))
    for b in body:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(b)))
    for n in notes or []:
        print(f"  {n}")
    sys.stdout.flush()


def exit_on_sigterm() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so that the bench's `finally` blocks stop what it started."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {load:.1f}, "
            f"python {platform.python_version()}")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def tree(pid: int) -> list[int]:
    """pid and all its descendants (now)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def kill_tree(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal a process we started and everything below it (by pid, never by name)."""
    for p in tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL of what is left of its tree (as it was before the SIGTERM) after
    `timeout` s."""
    pids = tree(proc.pid) if proc.poll() is None else []
    if pids:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.returncode


def free_port() -> int:
    """A free TCP port on loopback (for a rendezvous store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(argv: list[str], world: int, device: str = "cpu") -> None:
    """Start `world` copies of `argv` as the ranks of one torch.distributed group on loopback (the
    environment torchrun would give them, the repository's packages on PYTHONPATH, one OpenMP
    thread per rank on CPU, metrics server off) and wait for all; exit naming the codes if any
    rank failed."""
    port = str(free_port())
    paths = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image"), os.environ.get("PYTHONPATH", "")])
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   KUBETRAIN_METRICS_PORT="0", KUBETRAIN_DEVICE=device, PYTHONPATH=paths)
        if device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        procs.append(subprocess.Popen(argv, env=env))
    codes = [pr.wait() for pr in procs]
    if codes != [0] * world:
        sys.exit(f"ranks exited with {codes}")
