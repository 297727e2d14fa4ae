"""Impossible or broken specs fail at startup with a clear message and the right exit code.
(These fail before any collective, so they run in-process against a fake 2-rank context.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubetrain_trainer import config
from kubetrain_trainer.distributed import DistContext, pick_device
from kubetrain_trainer.engine import Trainer
from kubetrain_trainer.errors import TrainerError

pytestmark = pytest.mark.trainer

CTX = DistContext(rank=0, world_size=2, local_rank=0, local_world_size=2, device=torch.device("cpu"), backend="gloo")

CASES: list[tuple[dict[str, Any], int, str]] = [
    ({"precision": {"dtype": "fp8"}}, 64, "precision.dtype fp8 needs a CUDA GPU with compute capability >= 8.9"),
    ({"training": {"globalBatchSize": 1}}, 64, "smaller than the world size 2"),
    ({"lrSchedule": {"type": "WarmupLR", "params": {"warmup_num_steps": -3}}}, 64, "spec.lrSchedule.params.warmup_num_steps"),
    ({"lrSchedule": {"type": "Cosine"}}, 64, "spec.lrSchedule.type"),
    ({"precision": {"dtype": "fp16", "minLossScale": 0.0}}, 64, "min"),
    ({"model": {"entrypoint": "no_such_module_xyz:build"}}, 65, "cannot import module 'no_such_module_xyz'"),
    ({"model": {"entrypoint": "tests.trainer.entry_models:not_a_module"}}, 65, "must return an nn.Module"),
    ({"data": {"type": "tokens", "path": "/nonexistent/shards"}, "parallelism": {"strategy": "ddp"}}, 65, "does not exist"),
]


@pytest.mark.parametrize(("spec", "exit_code", "needle"), CASES)
def test_clear_startup_error(spec: dict[str, Any], exit_code: int, needle: str) -> None:
    with pytest.raises(TrainerError) as err:
        Trainer(config.from_spec(spec), CTX, None)
    assert needle in str(err.value)
    assert err.value.exit_code == exit_code


def test_gpu_job_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine has no GPU in CI; on one that does, hide it: the error is about what torch reports.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("KUBETRAIN_DEVICE", raising=False)
    with pytest.raises(TrainerError, match="gpusPerWorker is 1 but no CUDA device"):
        pick_device(1, 0)
    monkeypatch.setenv("KUBETRAIN_DEVICE", "cpu")
    assert pick_device(1, 0) == torch.device("cpu")
