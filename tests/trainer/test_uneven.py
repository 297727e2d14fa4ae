"""Uneven splits: a world size that does not divide globalBatchSize trains exactly like one rank.

G=8, micro 2 on 3 ranks: ranks take 3, 3, 2 samples in micro-batches [2, 1], [2, 1], [2, pad]; the
losses, gradient norms and eval loss equal those of 1 rank (ddp, zero2, zero3, zero1).  A checkpoint
written at 2 ranks resumes at 3 with the losses of the uninterrupted run.  Real gloo processes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubetrain_trainer.data import make_plan

from .harness import launch
from .procs import metrics, run_trainer, train_here, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

STRATEGIES = ("ddp", "zero2", "zero3", "zero1")
BASE: dict[str, Any] = {
    "model": {"preset": "tiny", "seqLen": 32},
    "training": {"maxSteps": 4, "globalBatchSize": 8, "microBatchSize": 2, "evalEvery": 4, "evalBatches": 1,
                 "gradientClipping": 0},
    "optimizer": {"type": "AdamW", "lr": 3e-3},
}


def _spec(strategy: str) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["parallelism"] = {"strategy": strategy}
    return spec


def test_plan_covers_the_global_batch_once() -> None:
    for g, w, micro in ((8, 3, 2), (10, 3, None), (12, 4, 3), (7, 7, None), (12, 5, 1), (8, 2, 2)):
        plans = [make_plan(g, micro, w, r) for r in range(w)]
        assert len({p.accum_steps for p in plans}) == 1
        seen = [i for p in plans for m in range(p.accum_steps) if p.micro_count(m) for i in p.micro_indices(1, m)]
        assert seen == list(range(g, 2 * g)), (g, w, micro)
        weights = sum(p.micro_weight(m) for p in plans for m in range(p.accum_steps))
        assert weights == pytest.approx(w)  # mean over ranks of the per-rank weight sums is 1
    assert make_plan(8, 2, 2, 1).micro_indices(0, 1) == range(6, 8)  # the even layout is today's


def test_same_losses_on_1_and_3_ranks(tmp_path: Path) -> None:
    runs = [{"label": s, "spec": _spec(s)} for s in STRATEGIES]
    one = launch("run_configs", 1, {"runs": runs[:1]}, tmp_path / "w1")[0]["runs"][0]["history"]
    three = launch("run_configs", 3, {"runs": runs}, tmp_path / "w3")
    assert three[0]["runs"] == three[1]["runs"] == three[2]["runs"], "ranks disagree about the loss / grad norm"
    for run in three[0]["runs"]:
        hist = run["history"]
        assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in one], rel=2e-5), run["label"]
        assert [h["grad_norm"] for h in hist] == pytest.approx([h["grad_norm"] for h in one], rel=1e-4), run["label"]
        assert hist[-1]["eval_loss"] == pytest.approx(one[-1]["eval_loss"], rel=2e-5), run["label"]


def test_resume_from_2_ranks_at_3(tmp_path: Path) -> None:
    """G=10: 2 steps at 2 ranks (5 + 5), checkpoint, 2 more at 3 ranks (4 + 3 + 3) == 4 steps on 1."""
    def spec(steps: int, strategy: str) -> dict[str, Any]:
        s = _spec(strategy)
        s["training"] |= {"maxSteps": steps, "globalBatchSize": 10, "evalEvery": 0}
        s["checkpoint"] = {"intervalSteps": 2, "keep": 3}
        return s

    run_dir = tmp_path / "chain"
    run_trainer(write_job(tmp_path / "a.json", spec(2, "zero2")), 2, run_dir)
    run_trainer(write_job(tmp_path / "b.json", spec(4, "zero3")), 3, run_dir)
    ref_dir = tmp_path / "ref"
    train_here(write_job(tmp_path / "ref.json", spec(4, "ddp")), ref_dir)
    got, ref = metrics(run_dir), metrics(ref_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["world_size"] for r in got] == [2, 2, 3, 3]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)
