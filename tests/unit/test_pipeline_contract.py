"""parallelism.pipelineParallel (issue 20) in the contract: schedule names, the CEL rules (the CRD's
own, through cel-python), the semantic checks, the balanced split, the bubble in theory."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain import api
from kubetrain.api.modelsize import gpt_param_count, gpt_size
from kubetrain.api.pipeline import balanced_boundaries, gpt_split, stage_params
from kubetrain.api.pipeline_schedules import bubble_fraction, canonical_schedule
from kubetrain.api.validate import validate_object


def job(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "pp"}, "spec": spec}


GOOD: dict[str, Any] = {
    "workers": {"replicas": 2, "gpusPerWorker": 8}, "model": {"preset": "1.3B"},
    "training": {"globalBatchSize": 64, "microBatchSize": 2},
    "parallelism": {"strategy": "zero3", "tensorParallel": 2, "pipelineParallel": 4},
}


def _with(change: dict[str, Any]) -> dict[str, Any]:
    spec = {k: (v | change[k] if isinstance(v, dict) and k in change else v) for k, v in GOOD.items()}
    return spec | {k: v for k, v in change.items() if k not in spec}


def test_a_valid_pp_job_and_defaults() -> None:
    assert validate_object(job(GOOD)) == []
    spec = api.TrainingJobSpec.model_validate(GOOD)
    assert spec.parallelism.model_parallel == 8
    assert spec.parallelism.pipeline_schedule is None  # 1F1B by default (kubetrain.api.pipeline)
    assert api.TrainingJobSpec().parallelism.pipeline_parallel == 1


@pytest.mark.parametrize(("given", "canonical"), [
    ("GPipe", "GPipe"), ("gpipe", "GPipe"), ("ScheduleGPipe", "GPipe"), ("1f1b", "1F1B"),
    ("Schedule1F1B", "1F1B"), ("interleaved1F1B", "Interleaved1F1B"), ("ScheduleInterleaved1F1B", "Interleaved1F1B"),
    ("ZeroBubble", "ZeroBubble"), ("ScheduleInterleavedZeroBubble", "ZeroBubble"), ("zero-bubble", "ZeroBubble"),
])
def test_schedule_names_are_normalised(given: str, canonical: str) -> None:
    assert canonical_schedule(given) == canonical
    spec = api.TrainingJobSpec.model_validate(_with({"parallelism": {"pipelineSchedule": given}}))
    assert spec.parallelism.pipeline_schedule == canonical
    assert validate_object(job(_with({"parallelism": {"pipelineSchedule": given}}))) == []


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"workers": {"gpusPerWorker": 3}}, "spec.parallelism.pipelineParallel",
         "pipelineParallel x tensorParallel must divide the world size"),
        ({"parallelism": {"pipelineParallel": 2, "pipelineSchedule": "ZBV"}}, "spec.parallelism.pipelineSchedule",
         "unknown pipeline schedule 'ZBV'"),
        ({"parallelism": {"pipelineParallel": 2, "pipelineSchedule": "ScheduleZBVZeroBubble"}},
         "spec.parallelism.pipelineSchedule", "first and the last stage on one rank"),
        ({"model": {"entrypoint": "pkg.mod:fn"}, "parallelism": {"pipelineParallel": 2}}, "spec.model.entrypoint",
         "needs model.pipelineSplit"),
        ({"model": {"preset": "1.3B", "pipelineSplit": "pkg.mod:split"}}, "spec.model.pipelineSplit",
         "for entrypoint models"),
        ({"parallelism": {"strategy": "zero1", "tensorParallel": 1, "pipelineParallel": 2}},
         "spec.parallelism.strategy", "zero1 with pipelineParallel > 1"),
        ({"parallelism": {"strategy": "ddp", "tensorParallel": 1, "pipelineParallel": 2,
                          "sync": {"mode": "localSGD"}}}, "spec.parallelism.sync.mode", "not pipeline stages"),
        ({"parallelism": {"pipelineParallel": 1, "pipelineSchedule": "GPipe"}}, "spec.parallelism.pipelineParallel",
         "need pipelineParallel > 1"),
        # 64 / (dp 2 x micro 16) = 2 micro-batches < 4 stages: why, and what to do
        ({"training": {"globalBatchSize": 64, "microBatchSize": 16}}, "spec.training.microBatchSize",
         "fewer than pipelineParallel 4: 1F1B keeps one micro-batch in flight per stage"),
        ({"training": {"globalBatchSize": 64, "microBatchSize": 16},
          "parallelism": {"pipelineSchedule": "ScheduleInterleaved1F1B"}}, "spec.training.microBatchSize",
         "fewer than pipelineParallel 4: Interleaved1F1B"),
        ({"training": {"globalBatchSize": 36, "microBatchSize": 2},  # 9 micro-batches in 2 rounds of 4
          "parallelism": {"pipelineSchedule": "Interleaved1F1B"}}, "spec.training.microBatchSize",
         "multiple of its 2 rounds"),
        ({"training": {"globalBatchSize": 70, "microBatchSize": 2}}, "spec.training.globalBatchSize",
         "equal micro-batches on every data-parallel rank"),
        ({"model": {"preset": "tiny"}}, "spec.parallelism.pipelineParallel", "need at least 4 transformer blocks"),
        ({"parallelism": {"pipelineBoundaries": [6, 12]}}, "spec.parallelism.pipelineBoundaries",
         "so it needs 3"),
        ({"parallelism": {"pipelineBoundaries": [6, 6, 12]}}, "spec.parallelism.pipelineBoundaries",
         "strictly increasing"),
        ({"workers": {"replicas": 2, "minReplicas": 1, "gpusPerWorker": 4}}, "spec.parallelism.pipelineParallel",
         "elastic range [1, 2]"),
        ({"parallelism": {"pipelineParallel": 128}}, "spec.parallelism.pipelineParallel", "<= 64"),
    ],
)
def test_invalid_combinations_are_refused(change: dict[str, Any], path: str, words: str) -> None:
    problems = validate_object(job(_with(change)))
    assert any(p.path == path and words in str(p) for p in problems), problems


def test_gpipe_runs_fewer_micro_batches_than_stages() -> None:
    spec = _with({"training": {"globalBatchSize": 64, "microBatchSize": 16},
                  "parallelism": {"pipelineSchedule": "GPipe"}})
    assert validate_object(job(spec)) == []


def test_default_micro_batches_are_one_per_stage() -> None:
    spec = dict(GOOD, training={"globalBatchSize": 64})  # dp 2: 32 samples each, 4 micro-batches of 8
    assert validate_object(job(spec)) == []
    odd = dict(GOOD, training={"globalBatchSize": 18})
    problems = validate_object(job(odd))
    assert [p.path for p in problems] == ["spec.training.microBatchSize"], problems


def test_entrypoint_with_a_split_and_zero1_from_deepspeed() -> None:
    ok = _with({"model": {"entrypoint": "pkg.mod:fn", "pipelineSplit": "pkg.mod:split",
                          "tensorParallelPlan": "pkg.mod:plan"}})
    ok["model"].pop("preset")
    assert validate_object(job(ok)) == []
    spec = {"workers": {"replicas": 1, "gpusPerWorker": 2}, "parallelism": {"pipelineParallel": 2},
            "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
                          "zero_optimization": {"stage": 1}}}
    problems = validate_object(job(spec))
    assert [p.path for p in problems] == ["spec.deepspeed.zero_optimization.stage"], problems


def test_the_data_parallel_size_excludes_pp_and_tp() -> None:
    from kubetrain.api.deepspeed.values import nominal_world_size

    assert nominal_world_size(api.TrainingJobSpec.model_validate(GOOD)) == 2  # 16 ranks / (pp 4 x tp 2)


def test_balanced_split() -> None:
    assert balanced_boundaries([1] * 8, 2) == [4]
    assert balanced_boundaries([1] * 8, 4) == [2, 4, 6]
    # heavy embeddings on the first stage push blocks to the later ones
    assert balanced_boundaries([10] * 8, 2, first=35) == [2]
    with pytest.raises(ValueError):
        balanced_boundaries([1, 1], 3)
    size = gpt_size("124M")
    par = api.ParallelismSpec(pipeline_parallel=4)
    split = gpt_split(size, par)
    assert split.n == 4 and sum(len(split.blocks(s)) for s in range(4)) == 12
    counts = stage_params(size, split)
    # every parameter once, plus the tied head's copy on the last stage
    assert sum(counts) == gpt_param_count(12, 12, 768, 50304, 1024) + 50304 * 768
    # 38.6M-parameter embeddings (and the head's copy): one block on the first and the last stage
    assert len(split.blocks(0)) == len(split.blocks(3)) == 1 and counts[0] == max(counts)
    given = gpt_split(size, api.ParallelismSpec(pipeline_parallel=2, pipeline_boundaries=[5]))
    assert list(given.blocks(0)) == list(range(5)) and list(given.blocks(1)) == list(range(5, 12))


def test_bubble_in_theory() -> None:
    assert bubble_fraction("GPipe", 1, 8) == 0.0
    assert bubble_fraction("1F1B", 4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction("GPipe", 4, 8) == bubble_fraction("1F1B", 4, 8)
    assert bubble_fraction("Interleaved1F1B", 4, 8) == pytest.approx(3 / 19)
    assert bubble_fraction("ZeroBubble", 4, 8) < bubble_fraction("Interleaved1F1B", 4, 8)


def test_plan_shows_stages_memory_and_bubble() -> None:
    from kubetrain.cli.plan import render
    from kubetrain.tools.plan import plan

    base = dict(GOOD, precision={"dtype": "bf16"}, parallelism={"strategy": "zero2", "tensorParallel": 2})
    # the same data-parallel size without the pipeline: 4 ranks = dp 2 x tp 2
    flat = plan(api.TrainingJobSpec.model_validate(dict(base, workers={"replicas": 1, "gpusPerWorker": 4})), "H100")
    piped = plan(api.TrainingJobSpec.model_validate(
        dict(base, parallelism={"strategy": "zero2", "tensorParallel": 2, "pipelineParallel": 4,
                                "pipelineSchedule": "Interleaved1F1B"})), "H100")
    assert (flat.data_parallel, piped.data_parallel) == (2, 2)
    p = piped.pipeline
    assert p is not None and p.micro_batches == piped.accum_steps == 16  # 64 / (dp 2 x micro 2)
    assert p.bubble == pytest.approx(3 / (2 * 16 + 3))
    assert len(p.stages) == 8 and p.stages[0].embeddings and p.stages[-1].head
    assert [s.rank for s in p.stages] == [0, 1, 2, 3, 0, 1, 2, 3]
    # each pipeline rank holds about a quarter of the model states
    f, q = flat.memory_of("zero2"), piped.memory_of("zero2")
    assert f is not None and q is not None
    assert 0.2 < q.params_bytes / f.params_bytes < 0.4
    text = render(piped)
    assert "bubble 8.6% of a step" in text and "pp rank" in text and "embeddings" in text
    assert plan(api.TrainingJobSpec.model_validate(GOOD), "H100").step_time_s is not None
