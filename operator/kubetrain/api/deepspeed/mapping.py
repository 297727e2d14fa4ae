"""One mapping pass over all blocks, and the public entry points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetrain import api
from kubetrain.api.deepspeed.batch import resolve_batch
from kubetrain.api.deepspeed.context import Context, DeepSpeedConfigError, Resolution
from kubetrain.api.deepspeed.explain import explain
from kubetrain.api.deepspeed.features import (
    resolve_activation_checkpointing,
    resolve_gather_16bit,
    resolve_monitors,
)
from kubetrain.api.deepspeed.keys import DS, KUBETRAIN_DEFAULTS
from kubetrain.api.deepspeed.optimizer import resolve_clipping, resolve_optimizer
from kubetrain.api.deepspeed.precision import resolve_precision
from kubetrain.api.deepspeed.scheduler import resolve_schedule
from kubetrain.api.deepspeed.unsupported import unsupported_items, unsupported_note
from kubetrain.api.deepspeed.values import dedupe, is_int
from kubetrain.api.deepspeed.verdicts import cross_checks, removed_blocks
from kubetrain.api.deepspeed.zero import resolve_offload, resolve_strategy
from kubetrain.api.problems import Problem


def run(ctx: Context) -> Resolution:
    spec = ctx.spec
    if spec.deepspeed is not None and not isinstance(spec.deepspeed, Mapping):
        ctx.problem(DS, "must be an object (a DeepSpeed JSON config)", "write deepspeed: {...}")
    removed_blocks(ctx)
    batch = resolve_batch(ctx)
    clip = resolve_clipping(ctx)
    optimizer = resolve_optimizer(ctx)
    ds_opt = ctx.ds.get("optimizer")
    ds_params = ds_opt.get("params") if isinstance(ds_opt, Mapping) else None
    lr_given = spec.optimizer.lr is not None or (isinstance(ds_params, Mapping) and "lr" in ds_params)
    precision = resolve_precision(ctx)
    strategy = resolve_strategy(ctx)
    offload = resolve_offload(ctx, strategy)
    cross_checks(ctx, strategy)
    schedule = resolve_schedule(ctx, float(optimizer.lr or 0.0), optimizer.type or "AdamW", bool(lr_given))
    checkpointing = resolve_activation_checkpointing(ctx)
    resolve_monitors(ctx)
    resolve_gather_16bit(ctx, precision.dtype or "fp32")
    G, M, A = batch.global_batch, batch.micro, batch.accumulation
    if not ctx.nominal and M is None and not ctx.problems:
        M = -(-G // ctx.world)
    training = spec.training.model_copy(
        update={"global_batch_size": G, "micro_batch_size": M, "gradient_clipping": clip,
                "activation_checkpointing": checkpointing}
    )
    parallelism = spec.parallelism.model_copy(update={"strategy": strategy, "offload": offload})
    resolved = spec.model_copy(deep=True).model_copy(
        update={"training": training, "optimizer": optimizer, "precision": precision,
                "parallelism": parallelism, "lr_schedule": schedule}
    )
    unsupported = unsupported_items(spec.deepspeed or {})
    notes = [unsupported_note(k, v) for k, v in unsupported] + ctx.notes
    if ctx.auto_keys:
        notes.append(f"\"auto\" (the Hugging Face convention) is taken from the typed fields for {DS}."
                     f"{{{', '.join(sorted(ctx.auto_keys))}}}: `kubetrain validate --explain` shows the values")
    if A is not None and ctx.ds.get("gradient_accumulation_steps") is not None and spec.workers.min != spec.workers.max:
        notes.append(f"{DS}.gradient_accumulation_steps={A} holds at {ctx.world} processes; when the job "
                     f"runs at another size the global batch ({G}) and micro batch stay and the accumulation "
                     "is derived again")
    return Resolution(
        spec=resolved, world_size=ctx.world, nominal=ctx.nominal, gradient_accumulation_steps=A,
        problems=dedupe(ctx.problems), notes=notes, unsupported=[k for k, _ in unsupported],
        auto=sorted(ctx.auto_keys),
    )


def analyse(spec: api.TrainingJobSpec, world_size: int | None = None) -> Resolution:
    """Map `spec.deepspeed` onto the typed fields; never raises (see `Resolution.problems`)."""
    if world_size is not None and (not is_int(world_size) or world_size < 1):
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    return run(Context(spec, world_size))


def resolve(spec: api.TrainingJobSpec, world_size: int | None = None) -> api.TrainingJobSpec:
    """A new spec with every DeepSpeed-settable typed field filled.

    Each field: the typed value, else the DeepSpeed key, else the default. The batch rule
    runs at `world_size` (the data-parallel size DeepSpeed would see), else at the job's
    nominal size workers.replicas x procsPerWorker. microBatchSize stays None ("globalBatchSize
    / world size, no accumulation") when nothing determines it and no world size is given.
    `spec.deepspeed` is kept, so resolving the result again at the same size gives the same
    spec. Raises DeepSpeedConfigError (a ValueError) listing every problem.
    """
    res = analyse(spec, world_size)
    if res.problems:
        raise DeepSpeedConfigError(res.problems)
    return res.spec



def valid_world_sizes(spec: api.TrainingJobSpec) -> tuple[list[int], list[int]]:
    """(valid, invalid) worker counts in [minReplicas, maxReplicas] for the resolved batch.

    A count is valid when count x procsPerWorker <= globalBatchSize (every process gets at least
    one sample per step); uneven splits are exact in the trainer, so divisibility does not matter.
    The spec is resolved at its nominal size first.
    """
    res = analyse(spec)
    G = res.spec.training.global_batch_size or KUBETRAIN_DEFAULTS["globalBatchSize"]
    mp = spec.parallelism.model_parallel  # tensor x pipeline ranks of one replica share its samples
    valid: list[int] = []
    invalid: list[int] = []
    for count in range(spec.workers.min, spec.workers.max + 1):
        (valid if count * spec.workers.procs // mp <= G else invalid).append(count)
    return valid, invalid


def _world_size_note(spec: api.TrainingJobSpec) -> str | None:
    w = spec.workers
    if w.min == w.max:
        return None
    valid, invalid = valid_world_sizes(spec)
    invalid = [c for c in invalid if c != w.replicas]
    if not invalid:
        return None
    sizes = ", ".join(str(c) for c in invalid)
    return (f"globalBatchSize is smaller than the world size at {sizes} worker(s): the job cannot train at those "
            f"sizes (each process needs a sample per step); valid worker counts in [minReplicas {w.min}, "
            f"maxReplicas {w.max}]: {', '.join(str(c) for c in valid)}")


def deepspeed_problems(spec: api.TrainingJobSpec, raw_spec: dict[str, Any]) -> list[Problem]:
    """The semantic check `kubetrain validate` runs: the mapping at the job's nominal size."""
    return analyse(spec).problems


def deepspeed_notes(spec: api.TrainingJobSpec) -> list[str]:
    """Non-fatal remarks for `validate` and the operator's condition message: ignored
    DeepSpeed keys (by name), "auto" placeholders, surprising DeepSpeed defaults, and the
    worker counts of an elastic job with more processes than globalBatchSize."""
    res = analyse(spec)
    notes = list(res.notes)
    if not res.problems:
        note = _world_size_note(spec)
        if note:
            notes.append(note)
    return notes


def note_provider(obj: dict[str, Any]) -> list[str]:
    try:
        spec = api.TrainingJob.model_validate(obj).spec
    except Exception:  # invalid objects get problems, not notes
        return []
    return deepspeed_notes(spec)


def explain_object(obj: dict[str, Any]) -> list[str]:
    """`kubetrain validate --explain`: every DeepSpeed key of a TrainingJob object and what it becomes."""
    try:
        spec = api.TrainingJob.model_validate(obj).spec
    except Exception:  # invalid objects get problems, not explanations
        return []
    return [str(line) for line in explain(spec, analyse(spec))]
