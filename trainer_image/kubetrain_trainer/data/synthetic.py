"""A deterministic synthetic corpus with learnable structure.

Tokens follow a seeded sparse Markov chain: every token has ``branching`` possible successors with
fixed (Dirichlet-drawn) probabilities.  The entropy per token is at most ln(branching), far below
the uniform line ln(vocab), so even the tiny GPT's loss drops quickly.  Sample ``i`` of a split
depends only on (seed, split, i): the global sample index is the data position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SPLIT_IDS = {"train": 0, "eval": 1}


class SyntheticCorpus:
    def __init__(self, vocab_size: int, seq_len: int, seed: int, branching: int = 4) -> None:
        if vocab_size < 2:
            raise ValueError("synthetic corpus needs vocab_size >= 2")
        self.vocab_size: int | None = vocab_size
        self.seq_len = seq_len
        self.seed = seed
        self.branching = min(branching, vocab_size)
        rng = np.random.default_rng([seed, 0x5EED])
        self.successors = rng.integers(0, vocab_size, size=(vocab_size, self.branching), dtype=np.int64)
        probs = rng.dirichlet(np.full(self.branching, 0.7), size=vocab_size)
        self.cum_probs = np.cumsum(probs, axis=1)
        self.cum_probs[:, -1] = 1.0
        ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
        self.entropy = float(ent.mean())  # ≈ the best achievable loss (stationary weighting aside)

    def num_samples(self, split: str) -> int | None:
        return None  # unbounded

    def get(self, indices: Sequence[int], split: str = "train") -> np.ndarray:
        """Samples as an int64 array of shape (len(indices), seq_len + 1)."""
        n, t = len(indices), self.seq_len + 1
        sid = _SPLIT_IDS[split]
        u = np.empty((n, t), dtype=np.float64)
        start = np.empty(n, dtype=np.int64)
        for row, idx in enumerate(indices):
            rng = np.random.default_rng([self.seed, sid, int(idx)])
            start[row] = rng.integers(0, self.vocab_size)
            u[row] = rng.random(t)
        out = np.empty((n, t), dtype=np.int64)
        cur = start
        out[:, 0] = cur
        for j in range(1, t):
            choice = (u[:, j, None] > self.cum_probs[cur]).sum(axis=1)
            cur = self.successors[cur, np.minimum(choice, self.branching - 1)]
            out[:, j] = cur
        return out
