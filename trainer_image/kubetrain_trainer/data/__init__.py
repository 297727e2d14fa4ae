"""Data: corpora addressed by global sample index, and the global-batch plan.

Each optimizer step consumes exactly ``globalBatchSize`` samples at any world size ``W <= G``: at
step ``s`` rank ``r`` of ``W`` reads ``n_r = G // W + (1 if r < G % W else 0)`` samples, contiguous in
the global sample index from ``s*G + r*(G // W) + min(r, G % W)`` (``[s*G + r*G/W, s*G + (r+1)*G/W)``
when ``W`` divides ``G``), in micro-batches of at most ``microBatchSize`` (default ``ceil(G / W)``).
Every rank runs the same number of micro-steps, ``accum_steps = ceil(ceil(G / W) / micro)``; a rank
whose samples run out first repeats its first micro-batch with weight 0 (``micro_count`` 0), so the
collectives of each backward (DDP's final all-reduce, FSDP's reduce-scatter) line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import DataConfig
from ..errors import DataError, SpecError
from .files import WindowedCorpus, open_text, open_tokens, prepare_data
from .synthetic import SyntheticCorpus

if TYPE_CHECKING:
    from .loader import Loader

__all__ = [
    "BatchPlan",
    "Corpus",
    "Loader",
    "SyntheticCorpus",
    "WindowedCorpus",
    "make_plan",
    "open_corpus",
    "prepare_data",
]


class Corpus(Protocol):
    vocab_size: int | None

    def num_samples(self, split: str) -> int | None: ...

    def get(self, indices: Sequence[int], split: str = "train") -> np.ndarray: ...


def open_corpus(cfg: DataConfig, *, vocab_size: int | None, seq_len: int, seed: int) -> Corpus:
    corpus: Corpus
    if cfg.type == "synthetic":
        if vocab_size is None:
            raise DataError("data.type synthetic needs a model with a known vocabulary (set model.vocabSize)")
        return SyntheticCorpus(vocab_size, seq_len, seed)
    assert cfg.path is not None
    if cfg.type == "tokens":
        corpus = open_tokens(cfg.path, cfg.token_dtype, seq_len, seed)
    else:
        corpus = open_text(cfg.path, seq_len, seed)
    if vocab_size is not None and corpus.vocab_size is not None and corpus.vocab_size > vocab_size:
        raise DataError(
            f"data at {cfg.path} has vocabulary size {corpus.vocab_size} but model.vocabSize is {vocab_size}"
        )
    return corpus


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


def make_plan(global_batch: int, micro_batch: int | None, world_size: int, rank: int) -> BatchPlan:
    if global_batch < world_size:
        raise SpecError(
            f"spec.training.globalBatchSize {global_batch} is smaller than the world size {world_size}: "
            "raise globalBatchSize (every process needs at least one sample per step)"
        )
    micro = micro_batch or -(-global_batch // world_size)
    return BatchPlan(global_batch, world_size, rank, micro)


def __getattr__(name: str) -> Any:
    """``Loader`` needs torch; everything else here (and ``prepare_data``) needs only numpy."""
    if name == "Loader":
        from .loader import Loader

        return Loader
    raise AttributeError(name)
