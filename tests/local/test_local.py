"""`kubetrain local` end to end: real launcher, real torch.distributed ranks on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]


def write_job(tmp_path: Path, max_steps: int, interval: int = 0, name: str = "t") -> Path:
    job = {
        "apiVersion": "kubetrain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": {"replicas": 1, "procsPerWorker": 2},
            "model": {"preset": "tiny"},
            "training": {"maxSteps": max_steps, "globalBatchSize": 8, "microBatchSize": 4},
            "optimizer": {"lr": 0.003},
            "checkpoint": {"intervalSteps": interval},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def local(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetrain", "local", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,  # type: ignore[call-overload]
    )


def steps_in(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def test_short_run_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = local(str(write_job(tmp_path, 6)), "--run-dir", str(run_dir))
    out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err
    assert "steps           6 / 6" in out
    assert "loss " in out and "wall time" in out
    assert steps_in(run_dir) == [1, 2, 3, 4, 5, 6]
    assert "Traceback" not in err


def test_bad_yaml_exits_64_without_workers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                                   "metadata": {"name": "b"}, "spec": {"workers": {"replicas": 2, "maxReplicas": 1}}}))
    run_dir = tmp_path / "run"
    proc = local(str(bad), "--run-dir", str(run_dir))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 64
    assert "spec.workers.replicas: replicas must be <= maxReplicas" in err
    assert not run_dir.exists(), "no worker may start for an invalid spec"


def test_ctrl_c_checkpoints_and_rerun_resumes(tmp_path: Path) -> None:
    job = write_job(tmp_path, 400, interval=0)
    run_dir = tmp_path / "run"
    proc = local(str(job), "--run-dir", str(run_dir), start_new_session=True)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(steps_in(run_dir)) >= 3:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    stopped_at = steps_in(run_dir)[-1]
    assert "(none committed)" not in out, out

    job.write_text(job.read_text().replace("maxSteps: 400", f"maxSteps: {stopped_at + 3}"))
    again = local(str(job), "--run-dir", str(run_dir))
    out, err = again.communicate(timeout=280)
    assert again.returncode == 0, err
    steps = steps_in(run_dir)
    # The re-run starts right after the checkpoint taken at the stop: no step lost or repeated.
    assert steps[-3:] == [stopped_at + 1, stopped_at + 2, stopped_at + 3], steps


def test_prepare_data_then_train_on_shards(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    shards = tmp_path / "shards"
    done = subprocess.run([sys.executable, "-m", "kubetrain", "prepare-data", str(text), "--out", str(shards)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((shards / "metadata.json").read_text())
    assert meta["num_tokens"] == len(text.read_bytes())
    job = write_job(tmp_path, 3)
    spec = yaml.safe_load(job.read_text())
    spec["spec"]["data"] = {"type": "tokens", "path": str(shards)}
    job.write_text(yaml.safe_dump(spec))
    proc = local(str(job), "--run-dir", str(tmp_path / "run"))
    _out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err
    assert steps_in(tmp_path / "run") == [1, 2, 3]
