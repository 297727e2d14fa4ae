"""The trainer image itself, run with runc the way a worker pod runs it: the launcher (the image's
entrypoint) with torchrun's environment contract, as uid 1000 on a read-only root filesystem, the
spec mounted read-only, checkpoints on a mounted directory, a memory-backed /dev/shm and a
termination log. A 2-process CPU run (gloo on the container's own loopback) trains to a
checkpoint, then a second container resumes from it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.images.conftest import REPORT, VERSION
from tests.images.oci import ImageFacts, Mounts, rootfs, run

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

# Distributions that are "the torch wheels": torch itself, triton and the CUDA libraries.
TORCH_WHEELS = re.compile(r"^(torch|triton|nvidia_.*|cuda_.*)-[^-]+\.dist-info$")
SPEC_DIR = "/etc/kubetrain"  # where the operator mounts the spec ConfigMap
TRAINER_UID = 1000


@pytest.fixture(scope="module")
def trainer(trainer_image: ImageFacts) -> ImageFacts:
    return trainer_image


def installed_bytes(site_packages: Path, pattern: re.Pattern[str]) -> tuple[int, list[str]]:
    """Bytes on disk of the files that the matching distributions' RECORDs list."""
    total, names = 0, []
    for dist in sorted(site_packages.iterdir()):
        if not pattern.match(dist.name):
            continue
        names.append(dist.name.removesuffix(".dist-info"))
        for line in (dist / "RECORD").read_text().splitlines():
            path = site_packages / line.split(",", 1)[0]
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total, names


def test_facts_size_and_hygiene(trainer: ImageFacts) -> None:
    assert trainer.user == f"{TRAINER_UID}:{TRAINER_UID}"
    assert trainer.entrypoint == ["python", "-m", "kubetrain_trainer.launch"]
    assert trainer.labels["org.opencontainers.image.version"] == VERSION
    with rootfs(trainer.ref) as root:
        site = next((root / "opt/venv/lib").glob("python3*/site-packages"))
        wheels, names = installed_bytes(site, TORCH_WHEELS)
        assert any(n.startswith("torch-") for n in names) and any(n.startswith("nvidia_") for n in names)
        assert not any((root / "usr/bin" / cc).exists() for cc in ("gcc", "cc", "c++", "g++", "clang"))
        assert not (root / "root/.cache/pip").exists()
        assert not (root / "etc/ssl/certs/host-ca.crt").exists()
        assert not (root / "var/cache/kubetrain-wheels").exists()
        for owned in ("home/trainer", "checkpoints"):
            assert (root / owned).stat().st_uid == TRAINER_UID, f"/{owned} belongs to uid {TRAINER_UID}"
        assert "trainer:x:1000:1000:" in (root / "etc/passwd").read_text()
    ratio = trainer.size / wheels
    REPORT.append(f"trainer image {trainer.size / 1e9:.2f} GB = {ratio:.3f} x its torch wheels "
                  f"({wheels / 1e9:.2f} GB installed: {len(names)} distributions)")
    assert ratio <= 1.10, f"trainer image is {ratio:.3f} x its torch wheels (limit 1.10)"


def job(max_steps: int) -> dict[str, object]:
    return {
        "apiVersion": "kubetrain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "image-test"},
        "spec": {
            "workers": {"replicas": 1, "procsPerWorker": 2},
            "model": {"preset": "tiny"},
            "training": {"maxSteps": max_steps, "globalBatchSize": 8, "microBatchSize": 4},
            "optimizer": {"lr": 0.003},
            "checkpoint": {"intervalSteps": 5},
        },
    }


def steps_in(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def committed(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())


def launch(trainer: ImageFacts, tmp_path: Path, max_steps: int) -> tuple[int, str, dict[str, object]]:
    spec_dir = tmp_path / f"spec-{max_steps}"
    spec_dir.mkdir()
    (spec_dir / "job.yaml").write_text(yaml.safe_dump(job(max_steps)))
    spec_dir.chmod(0o755)
    (spec_dir / "job.yaml").chmod(0o644)
    term = tmp_path / f"termination-log-{max_steps}"
    term.write_text("")
    os.chown(term, TRAINER_UID, TRAINER_UID)
    # The kubelet writes /etc/hosts with the pod's own hostname: torchrun hands it to the workers
    # as MASTER_ADDR, so it must resolve (here to the container's loopback).
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost kubetrain-test\n")
    hosts.chmod(0o644)
    mounts = Mounts(
        binds=[(hosts, "/etc/hosts", True), (spec_dir, SPEC_DIR, True), (tmp_path / "checkpoints", "/checkpoints", False),
               (term, "/dev/termination-log", False)],
        tmpfs=["/tmp"],  # an emptyDir: torch's and the launcher's scratch files
        shm_bytes=1 << 30,  # the pods' memory-backed /dev/shm
    )
    env = {
        "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": "127.0.0.1:29400", "PET_RDZV_ID": "image-test", "PET_MAX_RESTARTS": "0",
        "KUBETRAIN_SPEC_FILE": f"{SPEC_DIR}/job.yaml",
    }
    result = run(trainer.ref, [], env=env, mounts=mounts, timeout=900)
    record = json.loads(term.read_text().strip(" \x00\n") or "{}")
    return result.returncode, result.stdout + result.stderr, record


def test_trains_to_a_checkpoint_then_resumes_read_only(trainer: ImageFacts, tmp_path: Path) -> None:
    run_dir = tmp_path / "checkpoints"  # KUBETRAIN_RUN_DIR=/checkpoints is the image's default
    run_dir.mkdir()
    os.chown(run_dir, TRAINER_UID, TRAINER_UID)

    code, log, record = launch(trainer, tmp_path, 10)
    assert code == 0, log[-6000:]
    assert steps_in(run_dir) == list(range(1, 11))
    assert "step-00000010" in committed(run_dir), committed(run_dir)
    assert record.get("step") == 10, record
    assert all(p.stat().st_uid == TRAINER_UID for p in run_dir.rglob("*")), "files written as uid 1000"

    code, log, record = launch(trainer, tmp_path, 15)
    assert code == 0, log[-6000:]
    assert steps_in(run_dir) == list(range(1, 16)), "the second container resumed at step 11"
    assert "step-00000015" in committed(run_dir)
    assert record.get("step") == 15, record
    assert "Traceback" not in log
