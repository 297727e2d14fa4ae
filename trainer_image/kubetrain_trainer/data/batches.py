"""The global-batch plan (which samples each rank reads at each micro-step) and the corpus protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Corpus(Protocol):
    vocab_size: int | None

    def num_samples(self, split: str) -> int | None: ...

    def get(self, indices: Sequence[int], split: str = "train") -> np.ndarray: ...


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    world_size: int
    rank: int
    micro_batch: int

    @property
    def per_rank(self) -> int:
        """This rank's samples per step (``n_r``); ranks below ``G % W`` take one more."""
        base, extra = divmod(self.global_batch, self.world_size)
        return base + (1 if self.rank < extra else 0)

    @property
    def max_per_rank(self) -> int:
        return -(-self.global_batch // self.world_size)

    @property
    def even(self) -> bool:
        """Every rank gets whole micro-batches of the same size (no partial or padded micro-steps)."""
        return self.global_batch % (self.world_size * self.micro_batch) == 0

    @property
    def offset(self) -> int:
        """This rank's first sample within a step's global batch."""
        base, extra = divmod(self.global_batch, self.world_size)
        return self.rank * base + min(self.rank, extra)

    @property
    def accum_steps(self) -> int:
        """Micro-steps per optimizer step: the same on every rank."""
        return -(-self.max_per_rank // self.micro_batch)

    def micro_count(self, micro: int) -> int:
        """Real samples in micro-batch ``micro`` of this rank (0: a padded micro-step)."""
        return max(0, min(self.micro_batch, self.per_rank - micro * self.micro_batch))

    def micro_weight(self, micro: int) -> float:
        """The factor on micro-batch ``micro``'s mean loss: samples x W / G, so that the mean over
        ranks of the summed gradients is the gradient of the global-batch mean (1 / accum_steps when
        the split is even)."""
        return self.micro_count(micro) * self.world_size / self.global_batch

    def micro_indices(self, step: int, micro: int) -> range:
        """Global sample indices of micro-batch ``micro``; a padded one re-reads the rank's first."""
        if self.micro_count(micro) == 0:
            micro = 0
        start = step * self.global_batch + self.offset + micro * self.micro_batch
        return range(start, start + self.micro_count(micro))
