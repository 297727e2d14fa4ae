"""Data: corpora addressed by global sample index, and the global-batch plan.

Each optimizer step consumes exactly ``globalBatchSize`` samples at any world size: at step ``s``
rank ``r`` of ``W`` reads samples ``[s*G + r*G/W, s*G + (r+1)*G/W)`` in micro-batches of
``microBatchSize``; gradient accumulation is ``G / (W * micro)``.
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
        return self.global_batch // self.world_size

    @property
    def accum_steps(self) -> int:
        return self.per_rank // self.micro_batch

    def micro_indices(self, step: int, micro: int) -> range:
        start = step * self.global_batch + self.rank * self.per_rank + micro * self.micro_batch
        return range(start, start + self.micro_batch)


def make_plan(global_batch: int, micro_batch: int | None, world_size: int, rank: int) -> BatchPlan:
    if global_batch % world_size:
        raise SpecError(
            f"spec.training.globalBatchSize ({global_batch}) must be divisible by the world size ({world_size})"
        )
    per_rank = global_batch // world_size
    micro = micro_batch or per_rank
    if per_rank % micro:
        raise SpecError(
            f"spec.training.globalBatchSize ({global_batch}) must be divisible by worldSize ({world_size}) "
            f"x microBatchSize ({micro})"
        )
    return BatchPlan(global_batch, world_size, rank, micro)


def __getattr__(name: str) -> Any:
    """``Loader`` needs torch; everything else here (and ``prepare_data``) needs only numpy."""
    if name == "Loader":
        from .loader import Loader

        return Loader
    raise AttributeError(name)
