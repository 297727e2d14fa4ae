"""Model construction: the built-in GPT (presets or sizes) or a user entrypoint ``pkg.module:fn``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kubetrain.api import ModelSpec
from kubetrain.api.modelsize import gpt_flops_per_token, model_shape

from ..errors import ModelError
from .gpt import GPT, GPTConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["GPT", "BuiltModel", "GPTConfig", "LossFn", "build_model", "cross_entropy", "load_entrypoint"]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy, computed in fp32 whatever the activation dtype."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())


@dataclass
class BuiltModel:
    module: nn.Module
    loss_fn: LossFn
    blocks: list[nn.Module]  # units for per-block FSDP sharding / activation checkpointing / compile
    n_params: int
    flops_per_token: float | None  # None when unknown (entrypoint models without a hint)
    seq_len: int
    vocab_size: int | None


def _find_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an arbitrary model: a ``fsdp_units()`` hook or the largest ModuleList."""
    hook = getattr(module, "fsdp_units", None)
    if callable(hook):
        return list(hook())
    best: list[nn.Module] = []
    for m in module.modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best):
            best = list(m)
    return best


def load_entrypoint(entrypoint: str) -> Callable[..., object]:
    mod_name, _, fn_name = entrypoint.partition(":")
    if not mod_name or not fn_name:
        raise ModelError(f"model.entrypoint must look like 'package.module:function', got {entrypoint!r}")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise ModelError(
            f"model.entrypoint {entrypoint!r}: cannot import module {mod_name!r}: {type(e).__name__}: {e}"
        ) from None
    fn = mod
    for part in fn_name.split("."):
        if not hasattr(fn, part):
            raise ModelError(f"model.entrypoint {entrypoint!r}: module {mod_name!r} has no attribute {fn_name!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ModelError(f"model.entrypoint {entrypoint!r}: {fn_name!r} is not callable")
    return fn


def _from_entrypoint(cfg: ModelSpec) -> BuiltModel:
    assert cfg.entrypoint is not None
    fn = load_entrypoint(cfg.entrypoint)
    args = dict(cfg.entrypoint_args or {})
    try:
        inspect.signature(fn).bind(**args)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model.entrypoint {cfg.entrypoint!r}: bad model.entrypointArgs: {e}") from None
    try:
        out = fn(**args)
    except Exception as e:
        raise ModelError(f"model.entrypoint {cfg.entrypoint!r} raised {type(e).__name__}: {e}") from e
    loss_fn: LossFn = cross_entropy
    if isinstance(out, Mapping):
        module, loss_fn = out.get("model"), out.get("loss_fn") or cross_entropy
    elif isinstance(out, tuple) and len(out) == 2:
        module, loss_fn = out
    else:
        module = out
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"model.entrypoint {cfg.entrypoint!r} must return an nn.Module, (module, loss_fn) or "
            f"{{'model': module, 'loss_fn': fn}}; got {type(module).__name__}"
        )
    if not callable(loss_fn):
        raise ModelError(f"model.entrypoint {cfg.entrypoint!r}: the loss function is not callable")
    n_params = sum(p.numel() for p in module.parameters())
    if n_params == 0:
        raise ModelError(f"model.entrypoint {cfg.entrypoint!r} returned a module without parameters")
    hint = getattr(module, "flops_per_token", None)
    fpt = float(hint()) if callable(hint) else None
    return BuiltModel(module, loss_fn, _find_blocks(module), n_params, fpt, model_shape(cfg).seq_len, None)


def build_model(cfg: ModelSpec) -> BuiltModel:
    """``spec.model`` built on the current default device (call under ``torch.device(...)``) with the
    current RNG state; the GPT's sizes are ``kubetrain.api.modelsize.model_shape`` (preset + sizes)."""
    if cfg.entrypoint:
        return _from_entrypoint(cfg)
    size = model_shape(cfg)
    gcfg = GPTConfig(
        n_layers=size.n_layers,
        n_heads=size.n_heads,
        d_model=size.d_model,
        vocab_size=size.vocab_size,
        seq_len=size.seq_len,
        tie_embeddings=size.tie_embeddings,
        dropout=cfg.dropout,
    )
    model = GPT(gcfg)
    n_params = sum(p.numel() for p in model.parameters())
    # FLOPs per token from kubetrain.api.modelsize: the same number `kubetrain plan` prints.
    return BuiltModel(
        model, cross_entropy, list(model.blocks), n_params, gpt_flops_per_token(size), size.seq_len, size.vocab_size,
    )
