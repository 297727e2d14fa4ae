"""Model entrypoints used by the trainer tests (``model.entrypoint: tests.trainer.entry_models:...``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Layer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(self.norm(x)))


class TinyLM(nn.Module):
    """A per-token MLP language model (bigram-ish): enough to learn the synthetic Markov corpus."""

    def __init__(self, vocab_size: int, d: int, n_layers: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.layers = nn.ModuleList(_Layer(d) for _ in range(n_layers))
        self.out = nn.Linear(d, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def tiny_lm(vocab_size: int = 256, d: int = 32, n_layers: int = 2) -> tuple[nn.Module, object]:
    return TinyLM(vocab_size, d, n_layers), _loss


def not_a_module() -> int:
    return 42


def raises() -> nn.Module:
    raise RuntimeError("boom from the user's model code")


def tiny_lm_tp_plan(model: TinyLM, tp_mesh: object, sequence_parallel: bool) -> dict[str, object]:
    """``model.tensorParallelPlan`` for ``tiny_lm``: each layer's fc and the output head split by
    output columns, gathered back (the norms and the embedding stay whole)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel

    del tp_mesh, sequence_parallel
    plan: dict[str, object] = {f"layers.{i}.fc": ColwiseParallel(output_layouts=Replicate()) for i in range(len(model.layers))}
    plan["out"] = ColwiseParallel(output_layouts=Replicate())
    return plan
