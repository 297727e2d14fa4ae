"""The contract of `spec.parallelism.tensorParallel` (tp): what it must divide, what it excludes.

A job's processes form a `(dp, tp)` mesh: tp consecutive ranks of one pod split every layer, and
the data-parallel size is `world / tp` (the global-batch arithmetic and DeepSpeed's batch rule use
it). So tp must divide `workers.procsPerWorker` (a TP group never leaves a pod, and workers come
and go in whole pods: dp changes, tp never does), the built-in GPT's `nHeads` (attention splits by
heads) and its `vocabSize` (the embedding and the output head split by vocabulary rows); a custom
model (`model.entrypoint`) needs `model.tensorParallelPlan`.

The rules are CEL on the TrainingJob spec (the API server rejects such a job at apply, with the
numbers); `kubetrain.api.crd` attaches them. `tp_problems` is the semantic check for what CEL
cannot see: a strategy set only by the DeepSpeed config.
"""

from __future__ import annotations

from typing import Any

from kubetrain import api
from kubetrain.api.modelsize import DEFAULT_PRESET, PRESETS
from kubetrain.api.problems import Problem

UNSUPPORTED_STRATEGIES = ("zero1",)
_ZERO1_FIX = "use zero2 (also shards gradients over the data-parallel ranks), zero3 or ddp, or tensorParallel 1"

TP = "(has(self.parallelism) && has(self.parallelism.tensorParallel) ? self.parallelism.tensorParallel : 1)"
PROCS = (
    "(has(self.workers) && has(self.workers.procsPerWorker) ? self.workers.procsPerWorker : "
    "(has(self.workers) && has(self.workers.gpusPerWorker) && self.workers.gpusPerWorker > 1 ? "
    "self.workers.gpusPerWorker : 1))"
)
_ENTRYPOINT = "(has(self.model) && has(self.model.entrypoint))"


def _model_size(field: str, key: str) -> str:
    """CEL for a built-in GPT size as `modelsize.model_shape` resolves it: explicit, else the preset's."""
    expr = str(PRESETS[DEFAULT_PRESET][key])
    for name, sizes in PRESETS.items():
        if name != DEFAULT_PRESET:
            expr = f"(has(self.model.preset) && self.model.preset == '{name}' ? {sizes[key]} : {expr})"
    default = str(PRESETS[DEFAULT_PRESET][key])
    return f"(!has(self.model) ? {default} : has(self.model.{field}) ? self.model.{field} : {expr})"


def cel_rules() -> tuple[api.CelRule, ...]:
    """Spec-level rules (they read workers, model and parallelism together)."""
    heads, vocab = _model_size("nHeads", "n_heads"), _model_size("vocabSize", "vocab_size")
    out = []
    for what, expr, guard, fix, path in (
        ("workers.procsPerWorker", PROCS, "false",
         "a tensor-parallel group stays inside one pod; set procsPerWorker to a multiple of it",
         ".parallelism.tensorParallel"),
        ("model.nHeads", heads, _ENTRYPOINT, "attention is split by heads; choose a divisor of nHeads",
         ".parallelism.tensorParallel"),
        ("model.vocabSize", vocab, _ENTRYPOINT,
         "the embedding and output head are split by vocabulary rows; pad vocabSize to a multiple of it",
         ".parallelism.tensorParallel"),
    ):
        # (no messageExpression with the values: the API server prices string(int) as unbounded)
        out.append(api.CelRule(
            rule=f"{TP} == 1 || {guard} || {expr} % {TP} == 0",
            message=f"parallelism.tensorParallel must divide {what}: {fix}", field_path=path,
        ))
    out.append(api.CelRule(
        rule=f"{TP} == 1 || !{_ENTRYPOINT} || has(self.model.tensorParallelPlan)",
        message="parallelism.tensorParallel > 1 with model.entrypoint needs model.tensorParallelPlan: "
        "export a function (model, tp_mesh, sequence_parallel) -> parallelize_module plan and name it "
        "there, or set tensorParallel 1",
        field_path=".model.entrypoint",
    ))
    return tuple(out)


def tp_problems(spec: api.TrainingJobSpec, raw_spec: dict[str, Any]) -> list[Problem]:
    """What CEL cannot see: the strategy resolved from a DeepSpeed config."""
    del raw_spec
    tp = spec.parallelism.tensor_parallel
    if tp == 1:
        return []
    from kubetrain.api.deepspeed import analyse  # deepspeed imports the models; keep import order light

    resolution = analyse(spec)
    strategy = resolution.spec.parallelism.strategy
    if resolution.problems or strategy not in UNSUPPORTED_STRATEGIES:
        return []
    if spec.parallelism.strategy in UNSUPPORTED_STRATEGIES:
        return []  # the CEL rule on spec.parallelism already says so
    return [Problem(
        "spec.deepspeed.zero_optimization.stage",
        f"stage 1 (zero1) with parallelism.tensorParallel {tp} is not supported", _ZERO1_FIX,
    )]
