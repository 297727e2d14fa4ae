"""/metrics and /progress, MFU arithmetic (single process)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch

from kubetrain_trainer.errors import SpecError
from kubetrain_trainer.metrics import MetricsServer, Progress, Throughput, peak_flops

pytestmark = pytest.mark.trainer


def test_metrics_and_progress_endpoints() -> None:
    progress = Progress(max_steps=100, world_size=4, trainingjob="llm", checkpoint_interval=5)
    server = MetricsServer(progress, 0, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        before = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        # before the first step: the step is 0, but no loss/throughput series (not a misleading 0)
        assert 'kubetrain_trainer_step{trainingjob="llm"} 0.0' in before
        assert "kubetrain_trainer_loss{" not in before and "kubetrain_trainer_tokens_per_second{" not in before
        progress.update({"step": 7, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.0, "mfu": 0.41,
                         "grad_norm": 0.9, "loss_scale": 1024.0, "skipped_steps": 2, "step_time": 0.1,
                         "world_size": 4})
        progress.checkpoint_committed(5, seconds=1.5)
        body = json.loads(urllib.request.urlopen(base + "/progress", timeout=5).read())
        assert body["step"] == 7 and body["maxSteps"] == 100 and body["loss"] == 2.5
        assert body["learningRate"] == 1e-3 and body["tokensPerSecond"] == 1234.0 and body["mfu"] == 0.41
        assert body["lastCheckpointStep"] == 5 and body["worldSize"] == 4 and body["updatedAt"].endswith("Z")
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'kubetrain_trainer_step{trainingjob="llm"} 7.0' in text
        assert 'kubetrain_trainer_skipped_steps_total{trainingjob="llm"} 2.0' in text
        assert 'kubetrain_trainer_checkpoint_last_step{trainingjob="llm"} 5.0' in text
        assert 'kubetrain_trainer_checkpoint_duration_seconds{trainingjob="llm"} 1.5' in text
        assert 'kubetrain_trainer_mfu_ratio{trainingjob="llm"} 0.41' in text
    finally:
        server.close()


def test_mfu_arithmetic_and_cpu_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETRAIN_PEAK_FLOPS", raising=False)
    assert peak_flops(torch.device("cpu"), "bf16") is None
    monkeypatch.setenv("KUBETRAIN_PEAK_FLOPS", "2e11")  # a declared peak: MFU on any device
    assert peak_flops(torch.device("cpu"), "bf16") == 2e11
    monkeypatch.setenv("KUBETRAIN_PEAK_FLOPS", "fast")
    with pytest.raises(SpecError, match="KUBETRAIN_PEAK_FLOPS='fast': expected a number"):
        peak_flops(torch.device("cpu"), "bf16")
    monkeypatch.delenv("KUBETRAIN_PEAK_FLOPS")
    t = Throughput(tokens_per_step=1000, flops_per_token=6e9, peak=989e12, n_devices=8)
    tps, mfu = t.measure(0.01)
    assert tps == pytest.approx(1e5) and mfu == pytest.approx(1e5 * 6e9 / (8 * 989e12))
    assert Throughput(1000, 6e9, None, 0).measure(0.01)[1] is None


def test_metrics_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods sharing one network (the e2e tier: every pod IP is a loopback address) each bind their
    own IP, so one pod's port does not take every other pod's."""
    monkeypatch.setenv("KUBETRAIN_METRICS_HOST", "127.3.0.7")
    server = MetricsServer(Progress(max_steps=1, world_size=1), 0)
    try:
        assert server.httpd.server_address[0] == "127.3.0.7"
        # the same port on another loopback address is another socket
        other = MetricsServer(Progress(max_steps=1, world_size=1), server.port, host="127.3.0.8")
        other.close()
    finally:
        server.close()
    monkeypatch.delenv("KUBETRAIN_METRICS_HOST")
    server = MetricsServer(Progress(max_steps=1, world_size=1), 0)
    try:
        assert server.httpd.server_address[0] == "0.0.0.0"
    finally:
        server.close()
