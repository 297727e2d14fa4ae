"""The per-step batch loader: all micro-batches of one step on the device, next step prefetched."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .batches import BatchPlan, Corpus

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
        """Eval micro-batch ``index`` of this rank: micro-step ``index % accum_steps`` of eval "step"
        ``index // accum_steps``, laid out like training (disjoint across ranks, ``G`` samples per eval
        step at any world size; weight it by ``plan.micro_count``, 0 for a padded micro-step)."""
        step, micro = divmod(index, self.plan.accum_steps)
        return self._to_device(self.corpus.get(self.plan.micro_indices(step, micro), "eval"))

    def close(self) -> None:
        if self._next is not None:
            self._next[1].join()
            self._next = None
