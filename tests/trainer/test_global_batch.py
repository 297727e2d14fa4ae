"""Global-batch semantics: 1, 2 and 4 ranks give the same losses (DDP and ZeRO-3 on the synthetic
corpus, ZeRO-1 on memory-mapped token shards; FSDP at world size 1 takes a different reduction path
than at 2 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetrain_trainer.data import prepare_data

from .harness import launch

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]


def _runs(shards: Path) -> list[dict[str, Any]]:
    out = []
    for strategy in ("ddp", "zero3", "tokens"):
        spec = {
            "model": {"preset": "tiny"},
            "training": {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 2, "evalEvery": 8, "evalBatches": 1},
            "parallelism": {"strategy": "zero1" if strategy == "tokens" else strategy},
            "optimizer": {"type": "AdamW", "lr": 3e-3},
        }
        if strategy == "tokens":  # memory-mapped shards (prepared from text) instead of synthetic data
            spec["data"] = {"type": "tokens", "path": str(shards)}
        out.append({"label": strategy, "spec": spec})
    return out


def test_same_losses_on_1_2_4_ranks(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i}: the quick brown fox {i % 7} jumps over {i % 5} lazy dogs\n" for i in range(400)))
    prepare_data([text], tmp_path / "shards", shard_tokens=4096)
    runs = _runs(tmp_path / "shards")
    results = {w: launch("run_configs", w, {"runs": runs}, tmp_path / f"w{w}")[0]["runs"] for w in (1, 2, 4)}
    for i, label in enumerate(("ddp", "zero3", "tokens")):
        ref = results[1][i]["history"]
        for w in (2, 4):
            hist = results[w][i]["history"]
            assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref], rel=2e-5), (label, w)
            assert [h["grad_norm"] for h in hist] == pytest.approx([h["grad_norm"] for h in ref], rel=1e-4), (label, w)
            assert hist[-1]["eval_loss"] == pytest.approx(ref[-1]["eval_loss"], rel=2e-5), (label, w)
    # and the two strategies agree with each other
    assert [h["loss"] for h in results[4][1]["history"]] == pytest.approx(
        [h["loss"] for h in results[1][0]["history"]], rel=2e-5
    )
