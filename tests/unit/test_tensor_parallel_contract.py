"""parallelism.tensorParallel (issue 19) in the contract, the operator's pods and `kubetrain plan`.

The CEL rules are the CRD's own (evaluated by cel-python through `validate_object`, the same
expressions the API server runs at apply); the tests/cluster tier applies them for real.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain import api
from kubetrain.api.constants import ENV_TENSOR_PARALLEL
from kubetrain.api.validate import validate_object
from kubetrain.controller.builders import JobRef, build_pod
from kubetrain.tools import plan_tp
from kubetrain.tools.plan import plan


def job(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tp"}, "spec": spec}


GOOD = {"workers": {"replicas": 2, "gpusPerWorker": 8}, "model": {"preset": "1.3B"},
        "parallelism": {"strategy": "zero3", "tensorParallel": 4}}


def test_a_valid_tp_job() -> None:
    assert validate_object(job(GOOD)) == []
    spec = api.TrainingJobSpec.model_validate(GOOD)
    assert spec.parallelism.sequence_parallel_on  # default on with tp > 1
    assert not api.TrainingJobSpec().parallelism.sequence_parallel_on


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"workers": {"gpusPerWorker": 6}}, "spec.parallelism.tensorParallel", "must divide workers.procsPerWorker"),
        ({"workers": {"gpusPerWorker": 8, "procsPerWorker": 2}}, "spec.parallelism.tensorParallel",
         "must divide workers.procsPerWorker"),
        ({"model": {"preset": "1.3B", "nHeads": 6, "dModel": 1536}}, "spec.parallelism.tensorParallel",
         "must divide model.nHeads"),
        ({"model": {"preset": "124M"}, "parallelism": {"tensorParallel": 8}}, "spec.parallelism.tensorParallel",
         "must divide model.nHeads"),  # 12 heads from the preset
        ({"model": {"preset": "1.3B", "vocabSize": 50257}}, "spec.parallelism.tensorParallel",
         "must divide model.vocabSize"),
        ({"model": {"entrypoint": "pkg.mod:fn"}}, "spec.model.entrypoint", "needs model.tensorParallelPlan"),
        ({"parallelism": {"strategy": "ddp", "sync": {"mode": "diloco"}}}, "spec.parallelism.sync.mode",
         "not tensor-parallel shards"),
        ({"parallelism": {"strategy": "zero1"}}, "spec.parallelism.strategy", "zero1 with tensorParallel > 1"),
        ({"parallelism": {"tensorParallel": 1, "sequenceParallel": True}}, "spec.parallelism.sequenceParallel",
         "needs tensorParallel > 1"),
        ({"model": {"preset": "1.3B", "tensorParallelPlan": "pkg.mod:plan"}}, "spec.model.tensorParallelPlan",
         "for entrypoint models"),
        ({"parallelism": {"tensorParallel": 128}}, "spec.parallelism.tensorParallel", "<= 64"),
    ],
)
def test_invalid_combinations_are_refused(change: dict[str, Any], path: str, words: str) -> None:
    spec = {k: (v | change[k] if isinstance(v, dict) and k in change else v) for k, v in GOOD.items()}
    spec |= {k: v for k, v in change.items() if k not in spec}
    problems = validate_object(job(spec))
    assert any(p.path == path and words in str(p) for p in problems), problems


def test_entrypoint_with_a_plan_is_valid() -> None:
    spec = dict(GOOD, model={"entrypoint": "pkg.mod:fn", "tensorParallelPlan": "pkg.mod:plan"})
    assert validate_object(job(spec)) == []


def test_zero1_from_a_deepspeed_config_is_refused() -> None:
    spec = {"workers": {"replicas": 1, "gpusPerWorker": 2}, "parallelism": {"tensorParallel": 2},
            "deepspeed": {"train_batch_size": 8, "zero_optimization": {"stage": 1}}}
    problems = validate_object(job(spec))
    assert [p.path for p in problems] == ["spec.deepspeed.zero_optimization.stage"], problems


def test_pods_get_the_processes_and_the_tp_size() -> None:
    spec = api.TrainingJobSpec.model_validate(GOOD)
    pod = build_pod(JobRef(name="tp", namespace="ns", uid="u"), spec, 1, 0, 0, default_image="trainer:test")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env[ENV_TENSOR_PARALLEL] == "4"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_plan_divides_the_model_over_tp() -> None:
    base = dict(GOOD, training={"globalBatchSize": 64, "microBatchSize": 1})
    one = plan(api.TrainingJobSpec.model_validate(dict(base, parallelism={"strategy": "ddp"})), "H100")
    four = plan(api.TrainingJobSpec.model_validate(dict(base, parallelism={"strategy": "ddp", "tensorParallel": 4})),
                "H100")
    assert (one.data_parallel, four.data_parallel, four.tensor_parallel) == (16, 4, 4)
    m1, m4 = one.memory_of("ddp"), four.memory_of("ddp")
    assert m1 is not None and m4 is not None
    # all but the LayerNorms is split: a little more than a quarter of the states per rank
    assert 0.25 < m4.params_bytes / m1.params_bytes < 0.2505
    assert m4.activations_bytes is not None and m1.activations_bytes is not None
    assert m4.activations_bytes < m1.activations_bytes / 2
    assert four.tp_collectives is not None and four.tp_collectives.bytes_per_step > 0
    assert one.flops_per_token == four.flops_per_token  # MFU: FLOPs per token do not change with tp
    assert (one.accum_steps, four.accum_steps) == (4, 16)  # the batch is split over data-parallel ranks


def test_plan_says_when_tp_is_needed_to_fit() -> None:
    spec = {"workers": {"replicas": 1, "gpusPerWorker": 8}, "precision": {"dtype": "bf16"},
            "model": {"preset": "1.3B", "nLayers": 48, "dModel": 4096, "nHeads": 32},
            "training": {"globalBatchSize": 64, "microBatchSize": 1, "activationCheckpointing": True},
            "parallelism": {"strategy": "zero3"}}
    p = plan(api.TrainingJobSpec.model_validate(spec), "L4")
    assert p.fits is False
    assert "tensor parallelism is needed to fit: tensorParallel 4 with zero3 fits" in p.suggestion


def test_sequence_parallel_shrinks_the_norm_activations() -> None:
    from kubetrain.api.modelsize import gpt_size

    size = gpt_size("124M")
    kw: dict[str, Any] = {"checkpointing": False, "dropout": 0.0, "tp": 4}
    on = plan_tp.activation_bytes(size, 4, "bf16", "zero3", sequence_parallel=True, **kw)
    off = plan_tp.activation_bytes(size, 4, "bf16", "zero3", sequence_parallel=False, **kw)
    assert on < off
    parts = plan_tp.split_breakdown(size, 4)
    assert parts.token_embedding * 4 == size.vocab_size * size.d_model
