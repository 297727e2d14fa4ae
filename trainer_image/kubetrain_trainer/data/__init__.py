"""Data: corpora addressed by global sample index, and the global-batch plan.

Each optimizer step consumes exactly ``globalBatchSize`` samples at any world size: at step ``s``
rank ``r`` of ``W`` reads samples ``[s*G + r*G/W, s*G + (r+1)*G/W)`` in micro-batches of
``microBatchSize``; gradient accumulation is ``G / (W * micro)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError, SpecError
from .files import WindowedCorpus, open_text, open_tokens, prepare_data
from .synthetic import SyntheticCorpus

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


Batch = list[tuple[torch.Tensor, torch.Tensor]]


class Loader:
    """All micro-batches of one step as (inputs, targets) on ``device``; the next step is prefetched
    on a background thread so data generation overlaps the step."""

    def __init__(self, corpus: Corpus, plan: BatchPlan, device: torch.device) -> None:
        self.corpus = corpus
        self.plan = plan
        self.device = device
        self._next: tuple[int, threading.Thread, list[Any]] | None = None

    def _read(self, step: int, out: list[Any]) -> None:
        try:
            for m in range(self.plan.accum_steps):
                out.append(self.corpus.get(self.plan.micro_indices(step, m), "train"))
        except Exception as e:  # surfaced by step_batch on the training thread
            out.append(e)

    def _to_device(self, arr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(arr)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def step_batch(self, step: int) -> Batch:
        arrays: list[Any] = []
        if self._next is not None and self._next[0] == step:
            _, thread, arrays = self._next
            thread.join()
        else:
            self.close()
            self._read(step, arrays)
        self._next = None
        for item in arrays:
            if isinstance(item, Exception):
                raise DataError(f"reading step {step}'s batch failed: {type(item).__name__}: {item}") from item
        prefetched: list[Any] = []
        thread = threading.Thread(target=self._read, args=(step + 1, prefetched), daemon=True)
        thread.start()
        self._next = (step + 1, thread, prefetched)
        return [self._to_device(a) for a in arrays]

    def eval_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval micro-batch ``index`` of this rank (disjoint across ranks)."""
        start = (index * self.plan.world_size + self.plan.rank) * self.plan.micro_batch
        return self._to_device(self.corpus.get(range(start, start + self.plan.micro_batch), "eval"))

    def close(self) -> None:
        if self._next is not None:
            self._next[1].join()
            self._next = None
