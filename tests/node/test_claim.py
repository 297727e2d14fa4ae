"""A run of the real node that is killed (SIGKILL: no teardown, no exit hooks) leaves the host
changed: the node's network namespace, the kubelet's cgroups with the containers still in them,
its kernel settings, its /var/log/containers links. The next run takes it all back before it
starts (claim.py). Runs before test_real_node.py takes the machine's one node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.node import claim
from tests.node.conftest import REPO
from tests.node.node import host_snapshot

pytestmark = pytest.mark.node
START = """
import sys, time
from pathlib import Path
from tests.node import cluster
cluster.start(Path(sys.argv[1]))
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_run_is_taken_back_by_the_next(node_host: None, tmp_path: Path) -> None:
    before = host_snapshot(tmp_path)
    errors = tmp_path / "killed.stderr"
    with errors.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", START, str(tmp_path / "killed")], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # "" when it failed to start
        assert line.strip() == "ready", errors.read_text()[-4000:]
        held = claim.read()
        assert held is not None and held.owner == child.pid and held.alive(), held
        assert held.sysctls == before["sysctls"]
        with pytest.raises(claim.NodeBusy, match=f"process {child.pid}"):  # a live run is left alone
            claim.acquire(tmp_path / "other" / "node")
    finally:
        child.kill()
        child.wait()
    left = host_snapshot(tmp_path)
    assert left["netns"] and left["cgroups"], f"the killed run left nothing to take back: {left}"

    claim.acquire(tmp_path / "next" / "node")
    held = claim.read()
    assert held is not None and held.owner != child.pid and held.node_dir == str(tmp_path / "next" / "node")
    claim.release(tmp_path / "next" / "node")
    assert claim.read() is None
    after = host_snapshot(tmp_path)
    assert after == before, f"the killed run's node is still on the host:\nbefore {before}\nafter  {after}"
