"""Storage that refuses: a full disk while saving, a read-only and an unreadable checkpoint
directory, an unreadable data shard.  Each ends with a named reason in the termination log and a
permanent exit (65), never "exit 1" (which the operator would retry forever), and the previous
`latest` stays intact.

How the faults are caused (real kernel behaviour, no mocks): the checkpoint directory is a small
tmpfs mounted by the test (full: its size; read-only: `mount -o remount,ro`); unreadable means
mode 000 seen by a `kubetrain local` started under `setpriv` without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH — the tests run as root, and root without those capabilities obeys file modes
like any user."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .helpers import (
    NO_DAC,
    ckpts,
    latest,
    remount_ro,
    run_local,
    spec,
    step_dirs,
    termination,
    tmpfs,
    verify,
    write_job,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


def test_disk_full_then_read_only_then_unreadable_checkpoint_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml", spec(6, interval=2, keep=3))
    # One checkpoint of this model is about 2.1 MB: 3 MB hold step-2 but not step-4 beside it.
    with tmpfs(ckpts(run), "3m"):
        full = run_local(job, run)
        assert full.returncode == 65, full.stderr[-3000:]
        record = termination(run)
        assert record["reason"] == "CheckpointStorageFull", record
        assert "step 4" in record["message"] and "No space left" in record["message"], record
        assert record["step"] == 4
        assert "CheckpointStorageFull" in full.stderr  # kubetrain local prints the reason
        assert latest(run) == "step-00000002" and step_dirs(run) == ["step-00000002"], step_dirs(run)
        assert verify(ckpts(run)).returncode == 0  # the previous latest is intact
        assert not [p for p in ckpts(run).iterdir() if ".tmp-" in p.name], "the failed save was not cleaned up"

        # Read-only: refused at start-up (a write probe), before a training step is spent.
        remount_ro(ckpts(run))
        ro = run_local(job, run)
        assert ro.returncode == 65, ro.stderr[-3000:]
        record = termination(run)
        assert record["reason"] == "CheckpointStorageReadOnly", record
        assert "read-only" in record["message"], record
        assert latest(run) == "step-00000002" and verify(ckpts(run)).returncode == 0
        saved = tmp_path / "saved"
        shutil.copytree(ckpts(run), saved)

    # Unreadable (mode 000) for a trainer without DAC override: named, not a silent fresh start.
    shutil.copytree(saved, ckpts(run), dirs_exist_ok=True)
    os.chmod(ckpts(run), 0)
    try:
        denied = run_local(job, run, prefix=NO_DAC)
    finally:
        os.chmod(ckpts(run), 0o755)
    assert denied.returncode == 65, denied.stderr[-3000:]
    record = termination(run)
    assert record["reason"] == "CheckpointPermissionDenied", record
    assert "Permission denied" in record["message"], record
    assert latest(run) == "step-00000002" and step_dirs(run) == ["step-00000002"]


def test_unreadable_data_shard_is_a_data_error(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        rng.integers(0, 256, 20_000, dtype=np.uint16).tofile(shards / f"shard-{i}.bin")
    os.chmod(shards / "shard-1.bin", 0)
    job = write_job(tmp_path / "job.yaml", spec(2, data={"type": "tokens", "path": str(shards)}))
    run = tmp_path / "run"
    got = run_local(job, run, prefix=NO_DAC)
    assert got.returncode == 65, got.stderr[-3000:]
    record = termination(run)
    assert record["reason"] == "DataError", record
    assert "shard-1.bin" in record["message"] and "Permission denied" in record["message"], record
    assert "Traceback" not in record["message"]
