"""Blocks that switch trainer features on: `activation_checkpointing`, the monitors (`tensorboard`,
`csv_monitor`; `wandb` / `comet` / `comms_logger` accepted with a note), and
`zero_optimization.gather_16bit_weights_on_model_save` (and its two older spellings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetrain.api.deepspeed.context import Context
from kubetrain.api.deepspeed.keys import (
    ACTIVATION_CHECKPOINTING_DEFAULTS,
    DS,
    GATHER_16BIT_KEYS,
    MONITOR_JOB_NAME_DEFAULT,
    MONITOR_KEYS,
)
from kubetrain.api.deepspeed.values import fmt, normalise, same


@dataclass(frozen=True)
class Monitor:
    """A DeepSpeed monitor the trainer writes: kind 'tensorboard' (event files) or 'csv' (one file per
    metric), under output_path/job_name (a relative output_path is relative to the run directory)."""

    kind: str
    output_path: str
    job_name: str


def resolve_activation_checkpointing(ctx: Context) -> bool:
    """The block's presence turns on training.activationCheckpointing; knobs without an equivalent get notes."""
    sec = ctx.section("activation_checkpointing")
    if sec is None:
        return ctx.spec.training.activation_checkpointing
    for key, value in sec.items():
        if key not in ACTIVATION_CHECKPOINTING_DEFAULTS:
            ctx.notes.append(f"{DS}.activation_checkpointing.{key} is not a DeepSpeed setting and is ignored")
        elif not same(value, ACTIVATION_CHECKPOINTING_DEFAULTS[key]) and value is not None:
            ctx.notes.append(f"{DS}.activation_checkpointing.{key}={fmt(value)} has no equivalent: Kubetrain "
                             "recomputes each transformer block's activations (torch checkpoint) and keeps "
                             "them on the device, unpartitioned")
    return True


def resolve_monitors(ctx: Context) -> None:
    """Check the monitor sections as DeepSpeed does (extra keys rejected) and note the ones not written."""
    for key, allowed in MONITOR_KEYS.items():
        sec = ctx.section(key)
        if sec is None:
            continue
        ctx.check_keys(key, sec, allowed)
        enabled = ctx.boolean(f"{DS}.{key}.enabled", sec.get("enabled", False))
        if enabled and key not in ("tensorboard", "csv_monitor"):
            ctx.notes.append(f"{DS}.{key} is accepted but not written: Kubetrain's metrics go to metrics.jsonl, "
                             "/metrics (Prometheus) and tensorboard / csv_monitor when enabled")
    logger = ctx.section("comms_logger")
    if logger is not None and logger.get("enabled"):
        ctx.notes.append(f"{DS}.comms_logger is accepted but Kubetrain does not log collectives (torch.profiler "
                         "shows them)")


def monitors(ds: Mapping[str, Any] | None) -> list[Monitor]:
    """The enabled tensorboard / csv_monitor blocks of a DeepSpeed config (for the trainer)."""
    if not isinstance(ds, Mapping):
        return []
    cfg = normalise(ds, DS, [])
    out = []
    for key, kind in (("tensorboard", "tensorboard"), ("csv_monitor", "csv")):
        sec = cfg.get(key)
        if isinstance(sec, Mapping) and sec.get("enabled") is True:
            out.append(Monitor(kind, str(sec.get("output_path") or ""),
                               str(sec.get("job_name") or MONITOR_JOB_NAME_DEFAULT)))
    return out


def gather_16bit_weights_on_model_save(ds: Mapping[str, Any] | None) -> bool:
    """zero_optimization.gather_16bit_weights_on_model_save (any spelling; "auto" means false, as in
    Accelerate): write the final weights consolidated in 16 bits."""
    if not isinstance(ds, Mapping):
        return False
    zo = ds.get("zero_optimization")
    if not isinstance(zo, Mapping):
        return False
    return any(zo.get(k) is True for k in GATHER_16BIT_KEYS)


def resolve_gather_16bit(ctx: Context, dtype: str) -> None:
    zo = ctx.ds.get("zero_optimization")
    if not isinstance(zo, Mapping):
        return
    for key in GATHER_16BIT_KEYS:
        if key in zo:
            ctx.boolean(f"{DS}.zero_optimization.{key}", zo[key])
    if gather_16bit_weights_on_model_save(zo and {"zero_optimization": zo}) and dtype not in ("fp16", "bf16"):
        ctx.notes.append(f"{DS}.zero_optimization.gather_16bit_weights_on_model_save: the final weights are "
                         f"written in bf16 (the precision is {dtype}, not fp16/bf16)")
