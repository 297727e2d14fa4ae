"""``model.pipelineSplit`` for ``tests.trainer.entry_models:tiny_lm`` (issue 20's custom-model path)."""

from __future__ import annotations

import torch
from torch import nn

from .entry_models import TinyLM


class _TinyLMStage(nn.Module):
    """Stage ``index`` of ``n``: the embedding on the first, the output head on the last, the layers
    split evenly -- under the model's own names (``layers`` a ModuleDict keyed by index)."""

    def __init__(self, model: TinyLM, index: int, n: int) -> None:
        super().__init__()
        self.first, self.last = index == 0, index == n - 1
        if self.first:
            self.emb = model.emb
        per = len(model.layers) // n
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in range(index * per, (index + 1) * per)})
        if self.last:
            self.out = model.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self.emb(x)
        for layer in self.layers.values():
            x = layer(x)
        return self.out(x) if self.last else x


def tiny_lm_split(model: TinyLM, stage_index: int, num_stages: int) -> nn.Module:
    return _TinyLMStage(model, stage_index, num_stages)
