"""The machine's one real node: who holds it, and taking it back from a run that was killed.

A node changes the host until it is torn down (network namespace, cgroups, the kubelet's kernel
settings, /var/log/containers links). A run killed without teardown (SIGKILL, a lost session)
leaves all of that behind, and the next run would start on a changed host. So a run claims the
node in CLAIM (on /run: it lasts exactly as long as what it guards, until reboot) before it
touches the host, with the kernel settings as they were; the next run finds the claim and:

- the holder still runs (a test session's process, or a detached `up --real-node` whose node
  processes live): NodeBusy, naming it and how to stop it;
- the holder is gone: tears down what it left, restores the settings recorded in the claim, and
  says so on stderr.

The claim is the one record of those settings: release() (after teardown) restores them too.

    claim.acquire(node_dir, detach)   # before the node's network is made
    claim.release(node_dir)           # after teardown"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.cluster import procs
from tests.node import network
from tests.node.node import SYSCTLS, NodeError, read_sysctl, teardown, write_sysctls

CLAIM = Path(os.environ.get("KUBETRAIN_NODE_CLAIM", "/run/kubetrain-node.json"))


class NodeBusy(NodeError):
    pass


@dataclass
class Claim:
    node_dir: str  # the node's run dir (teardown's argument)
    owner: int  # the process that started the node
    owner_started: str  # its start time (field 22 of /proc/<pid>/stat): a reused pid is not the owner
    detached: bool
    sysctls: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        """A test session's node lives as long as the session's process (its components die with
        it); a detached node as long as any of its components."""
        if not self.detached:
            return _started(self.owner) == self.owner_started
        try:
            pids: dict[str, int] = json.loads((Path(self.node_dir) / "pids.json").read_text())
        except (OSError, ValueError):
            return False
        return any(procs.group_alive(pid) for pid in pids.values())

    def describe(self) -> str:
        who = "`python -m tests.cluster up --real-node`" if self.detached else f"process {self.owner}"
        return f"the real node started by {who} (in {self.node_dir})"


def _started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def read() -> Claim | None:
    try:
        return Claim(**json.loads(CLAIM.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def busy() -> str:
    """Why this process cannot have the node now (another run holds it), or ""."""
    held = read()
    if held is None or held.owner == os.getpid() or not held.alive():
        return ""
    stop = ("stop it with `python -m tests.cluster down`" if held.detached
            else "one real node per machine: wait for that run to end")
    return f"{held.describe()} is running; {stop}"


def acquire(node_dir: Path, detach: bool = False) -> None:
    """Claim the node for a node run in node_dir (idempotent for the same process and dir)."""
    held = read()
    me = os.getpid()
    if held is not None and held.owner == me and held.node_dir == str(node_dir):
        return
    if why := busy():
        raise NodeBusy(why)
    if held is not None:
        reclaim(held)
    CLAIM.write_text(json.dumps(asdict(Claim(
        node_dir=str(node_dir), owner=me, owner_started=_started(me), detached=detach,
        sysctls={name: read_sysctl(name) for name in SYSCTLS}))))


def reclaim(held: Claim) -> None:
    """Tear down the node of `held` and restore the kernel settings from before it started."""
    print(f"[real node] {held.describe()} was not torn down: removing what it left", file=sys.stderr)
    try:
        teardown(Path(held.node_dir))
    finally:
        network.NodeNetwork().down()
        write_sysctls(held.sysctls)
        CLAIM.unlink(missing_ok=True)


def release(node_dir: Path) -> None:
    """Give the node up after teardown, with the kernel settings as they were (only the claim of
    the node in node_dir)."""
    held = read()
    if held is not None and held.node_dir == str(node_dir):
        write_sysctls(held.sysctls)
        CLAIM.unlink(missing_ok=True)
