"""Optimizers (AdamW / Adam / SGD; fused on CUDA, foreach elsewhere) and the zero1 wrapper."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from kubetrain.api import OptimizerSpec

from .config import resolved
from .parallel import Parallelized

_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "AdamW": torch.optim.AdamW,
    "Adam": torch.optim.Adam,
    "SGD": torch.optim.SGD,
}


def optimizer_kwargs(cfg: OptimizerSpec, device: torch.device) -> dict[str, Any]:
    """torch keyword arguments of a resolved ``spec.optimizer`` (``kubetrain.api.deepspeed.resolve``
    filled every field)."""
    kw: dict[str, Any] = {"lr": resolved(cfg.lr, "optimizer.lr"), "weight_decay": cfg.weight_decay}
    if cfg.type == "SGD":
        kw.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        kw.update(betas=tuple(resolved(cfg.betas, "optimizer.betas")), eps=cfg.eps)
    if device.type == "cuda":
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return kw


def param_groups(par: Parallelized, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings only (not on norms and biases)."""
    decay = [p for p in par.params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in par.params if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(par: Parallelized, cfg: OptimizerSpec, device: torch.device) -> torch.optim.Optimizer:
    cls = _CLASSES[resolved(cfg.type, "optimizer.type")]
    kw = optimizer_kwargs(cfg, device)
    weight_decay = resolved(cfg.weight_decay, "optimizer.weightDecay")
    groups = param_groups(par, weight_decay)
    if par.strategy == "zero1" and dist.get_world_size() > 1:
        kw.pop("weight_decay")
        zero = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=cls, weight_decay=weight_decay, **kw)
        for g in groups[1:]:
            zero.add_param_group(g)
        return zero
    return cls(groups, **kw)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
