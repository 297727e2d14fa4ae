"""Damaged checkpoints: every kind of file, detected by its checksum, logged by name, moved aside,
and the run falls back to the previous committed checkpoint — ending exactly where an
uninterrupted run from that checkpoint ends.  All damaged: exit 65 NoValidCheckpoint, nothing
overwritten (or, with checkpoint.onNoValid: restart, a fresh start with the damaged ones kept)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import (
    ckpts,
    copy_run,
    flip_byte,
    latest,
    losses,
    run_local,
    spec,
    step_dirs,
    termination,
    tree_digest,
    verify,
    write_job,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps, a checkpoint every 2, keep 4: step-2, 4, 6 and 8 committed and verified good."""
    tmp = tmp_path_factory.mktemp("base")
    job = write_job(tmp / "job.yaml", spec(8, interval=2, keep=4))
    run = tmp / "run"
    done = run_local(job, run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert step_dirs(run) == ["step-00000002", "step-00000004", "step-00000006", "step-00000008"]
    good = verify(run)
    assert good.returncode == 0 and "4 of 4 checkpoint(s) good" in good.stdout, good.stdout + good.stderr
    return run


def test_each_kind_of_damaged_file_is_detected_and_fallen_back_from(base: Path, tmp_path: Path) -> None:
    """step-8: a data shard, step-6: DCP's .metadata, step-4: the manifest, each one flipped byte
    (sizes unchanged, so only the checksums can tell) -> resume from step-2, and steps 3..12 equal
    a run resumed from an intact step-2."""
    damaged = copy_run(base, tmp_path / "damaged")
    flip_byte(ckpts(damaged) / "step-00000008" / "__1_0.distcp")
    flip_byte(ckpts(damaged) / "step-00000006" / ".metadata")
    flip_byte(ckpts(damaged) / "step-00000004" / "manifest.json", where=0.3)

    offline = verify(damaged)  # the offline verifier sees the same
    assert offline.returncode == 1, offline.stdout
    assert "step-00000008 (latest): DAMAGED: __1_0.distcp does not match its checksum" in offline.stdout
    assert "step-00000006: DAMAGED: .metadata does not match its checksum" in offline.stdout
    assert "step-00000004: DAMAGED: manifest.json" in offline.stdout
    assert "step-00000002: good" in offline.stdout

    reference = copy_run(base, tmp_path / "reference")  # the uninterrupted run from step-2
    for name in ("step-00000004", "step-00000006", "step-00000008"):
        for f in (ckpts(reference) / name).iterdir():
            f.unlink()
        (ckpts(reference) / name).rmdir()
    (ckpts(reference) / "latest").write_text("step-00000002\n")

    job = write_job(tmp_path / "job12.yaml", spec(12, interval=2, keep=4))
    ref = run_local(job, reference)
    assert ref.returncode == 0, ref.stderr[-3000:]
    got = run_local(job, damaged)
    assert got.returncode == 0, got.stderr[-3000:]

    log = (damaged / "logs" / "worker-0.log").read_text()
    for name, what in (("step-00000008", "__1_0.distcp does not match its checksum"),
                       ("step-00000006", ".metadata does not match its checksum"),
                       ("step-00000004", "manifest.json")):
        assert f"checkpoint {ckpts(damaged) / name} failed verification: {what}" in log, log[-4000:]
    assert "loaded checkpoint" in log and "step-00000002" in log
    # Resumed from step 2: steps 3..12 bit-identical to the reference run from the same checkpoint.
    want, have = losses(reference), losses(damaged)
    assert [have[s] for s in range(3, 13)] == [want[s] for s in range(3, 13)]
    # The damaged ones were moved aside (kept, never overwritten by the new saves of steps 4, 6, 8).
    aside = sorted(p.name.split(".damaged-")[0] for p in ckpts(damaged).iterdir() if ".damaged-" in p.name)
    assert aside == ["step-00000004", "step-00000006", "step-00000008"]
    assert latest(damaged) == "step-00000012"
    assert verify(damaged).returncode == 0


def test_all_damaged_fails_65_and_overwrites_nothing_unless_restart(base: Path, tmp_path: Path) -> None:
    run = copy_run(base, tmp_path / "run")
    for name in step_dirs(run):
        flip_byte(ckpts(run) / name / "__0_0.distcp")
    before = tree_digest(ckpts(run))
    job = write_job(tmp_path / "job.yaml", spec(12, interval=2, keep=4))
    got = run_local(job, run)
    assert got.returncode == 65, got.stderr[-3000:]
    record = termination(run)
    assert record["reason"] == "NoValidCheckpoint", record
    assert "none is valid" in record["message"] and "__0_0.distcp" in record["message"], record
    assert "NoValidCheckpoint" in got.stderr
    assert tree_digest(ckpts(run)) == before, "a checkpoint directory was modified"
    assert max(losses(run)) == 8, "no training step may run"

    restart = write_job(tmp_path / "restart.yaml", spec(2, interval=2, keep=4, checkpoint={"onNoValid": "restart"}))
    again = run_local(restart, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert latest(run) == "step-00000002" and verify(ckpts(run) / "step-00000002").returncode == 0
    aside = [p for p in ckpts(run).iterdir() if ".damaged-" in p.name]
    assert len(aside) == 4, step_dirs(run)
    after = {f"{name.split('.damaged-')[0]}/{rest}": digest  # byte for byte, under their new names
             for name_rest, digest in tree_digest(ckpts(run)).items() if ".damaged-" in name_rest
             for name, rest in [name_rest.split("/", 1)]}
    assert after == {k: v for k, v in before.items() if k != "latest"}
