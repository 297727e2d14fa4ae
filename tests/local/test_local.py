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
    while not ((run_dir / "metrics.jsonl").exists() and len(steps_in(run_dir)) >= 3):
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no 3 steps within 200 s (exit {proc.poll()}): {proc.communicate()[1][-3000:]}")
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


def _train_on(tmp_path: Path, text: str, name: str, steps: int) -> list[dict[str, object]]:
    """prepare-data of ``text``, then `kubetrain local` on the shards; the run's step records."""
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(text)
    shards = tmp_path / f"shards-{name}"
    done = subprocess.run([sys.executable, "-m", "kubetrain", "prepare-data", str(corpus), "--out", str(shards)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((shards / "metadata.json").read_text())
    assert meta["num_tokens"] == len(corpus.read_bytes())
    job = write_job(tmp_path, steps, name=name)
    spec = yaml.safe_load(job.read_text())
    spec["spec"]["data"] = {"type": "tokens", "path": str(shards)}
    job.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / f"run-{name}"
    proc = local(str(job), "--run-dir", str(run_dir))
    _out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def test_prepare_data_then_train_on_shards(tmp_path: Path) -> None:
    """The shards are what the model reads: the same job (same seed, same initial weights) on two
    corpora starts from different losses, and a corpus of one repeated byte is learnt at once."""
    fox = _train_on(tmp_path, "the quick brown fox jumps over the lazy dog. " * 200, "fox", 3)
    assert [r["step"] for r in fox] == [1, 2, 3]
    same = _train_on(tmp_path, "a" * 9000, "same", 3)
    assert fox[0]["loss"] != same[0]["loss"], "the first loss does not depend on the corpus: shards not read"
    # One token only: the (tiny) model predicts it almost surely within 3 steps; the sentence cannot.
    assert float(same[-1]["loss"]) < float(same[0]["loss"]) - 0.5 and float(same[-1]["loss"]) < float(fox[-1]["loss"])
