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

from typing import TYPE_CHECKING, Any

from kubetrain.api import DataSpec

from ..errors import DataError, SpecError
from .batches import BatchPlan, Corpus
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


def open_corpus(cfg: DataSpec, *, vocab_size: int | None, seq_len: int, seed: int) -> Corpus:
    corpus: Corpus
    if cfg.type == "synthetic":
        if vocab_size is None:
            raise DataError("data.type synthetic needs a model with a known vocabulary (set model.vocabSize)")
        return SyntheticCorpus(vocab_size, seq_len, seed)
    if cfg.path is None:  # the CRD's CEL rule refuses this at apply; a worker started by hand may not
        raise SpecError(f"spec.data.path is required when spec.data.type is {cfg.type}")
    if cfg.type == "tokens":
        corpus = open_tokens(cfg.path, cfg.token_dtype, seq_len, seed)
    else:
        corpus = open_text(cfg.path, seq_len, seed)
    if vocab_size is not None and corpus.vocab_size is not None and corpus.vocab_size > vocab_size:
        raise DataError(
            f"data at {cfg.path} has vocabulary size {corpus.vocab_size} but model.vocabSize is {vocab_size}"
        )
    return corpus


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
