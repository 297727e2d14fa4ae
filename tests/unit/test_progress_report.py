"""The /progress report: the trainer writes it and the operator reads it with one model.

The writer is the trainer's real `metrics.Progress`; the operator's side (its poller against a
real HTTP server, the pass into status.progress) reads `ProgressReport` in tests/unit/test_reconcile.py.
"""

from __future__ import annotations

import json
import math

import pytest

from kubetrain.api.progress import ProgressReport

WIRE_KEYS = ["step", "maxSteps", "loss", "learningRate", "tokensPerSecond", "mfu", "lastCheckpointStep",
             "worldSize", "updatedAt"]


def test_wire_keys_are_camel_case_and_complete() -> None:
    body = json.loads(ProgressReport(step=1).to_json())
    assert list(body) == WIRE_KEYS


def test_non_finite_numbers_travel_as_null() -> None:
    report = ProgressReport.model_validate({"step": 3, "loss": math.nan, "tokensPerSecond": math.inf})
    assert report.loss is None and report.tokens_per_second is None
    assert json.loads(ProgressReport(step=3, learning_rate=0.1).to_json())["learningRate"] == 0.1
    # an answer in Python's json dialect (NaN literal) reads as null too: status.progress stays valid JSON
    assert ProgressReport.from_answer(json.loads('{"step": 2, "loss": NaN}')) == ProgressReport(step=2)


@pytest.mark.parametrize("answer", [[1, 2], "step 3", {}, {"step": -1}, {"step": "x"}, {"step": 1, "loss": "low"}])
def test_an_answer_that_is_not_a_report_is_no_reading(answer: object) -> None:
    assert ProgressReport.from_answer(answer) is None


def test_a_newer_writers_extra_keys_are_ignored() -> None:
    assert ProgressReport.from_answer({"step": 5, "tokensSeen": 99}) == ProgressReport(step=5)


def test_the_trainers_writer_and_the_operators_reader_agree() -> None:
    from kubetrain_trainer.metrics import Progress  # the trainer extra is installed wherever the tests run

    progress = Progress(max_steps=100, world_size=4, trainingjob="llm")
    progress.update({"step": 7, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.0, "mfu": None, "world_size": 4})
    progress.checkpoint_committed(5, seconds=1.0)
    answer = json.loads(progress.progress_json())  # the bytes the HTTP handler serves
    report = ProgressReport.from_answer(answer)
    assert report is not None and report == progress.report
    assert (report.step, report.max_steps, report.loss, report.learning_rate) == (7, 100, 2.5, 1e-3)
    assert (report.tokens_per_second, report.last_checkpoint_step, report.world_size) == (1234.0, 5, 4)
    assert report.updated_at is not None and report.updated_at.endswith("Z")
    progress.update({"step": 8, "loss": math.nan, "lr": 1e-3})  # a diverging step
    assert json.loads(progress.progress_json())["loss"] is None

