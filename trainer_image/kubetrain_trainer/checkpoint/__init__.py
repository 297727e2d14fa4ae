"""Sharded, verified, atomic checkpoints with torch.distributed.checkpoint (DCP), loadable at any
world size and by any strategy.  Importing this package does not import torch.

Layout (``$KUBETRAIN_CHECKPOINT_DIR``, default ``<run dir>/checkpoints``; ``layout``)::

    latest                      the committed checkpoint's directory name, written LAST
    step-00000100/              one directory per committed step
        .metadata               DCP's index: every tensor's global shape and where its chunks are
        __<rank>_0.distcp       DCP data, one file per writing rank
        kubetrain.json          step, world size, strategy, trainer state, model sizes
        manifest.json           every file above with its size and XXH3-64 checksum (``manifest``)
    step-00000200.tmp-1a2b3c4d/ a save in flight (or killed): never read, removed at the next start
    step-00000300.damaged-…/    failed verification, moved aside: never read, never deleted

What is saved (one logical layout for every strategy, so resharding is DCP's job; ``state``):

- ``model.<fqn>``: ``get_model_state_dict`` — full tensors under DDP/zero1 (DCP writes each once),
  DTensor shards under FSDP2 (zero2/zero3); the checkpoint records global shapes.
- ``optim.state.<fqn>.<name>`` / ``optim.param_groups.<fqn>.<key>``: ``get_optimizer_state_dict``
  with ``flatten_optimizer_state_dict=True`` — keyed by parameter name.  zero1 saves the flattened
  state of its LOCAL optimizer: each rank writes the parameters ZeRO assigned to it.
- ``local.rank<r>.{model,optim}.*``: only in the sync modes without a gradient all-reduce (localSGD,
  DiLoCo): each rank's, restored exactly at the same world size; at another world size rank r takes
  old rank ``r mod W_old``'s.
- ``sync.*``: the sync mode's state, replicated, read back whole on every rank.
- ``rng.rank<r>.{cpu,cuda}``: each rank's generator states (restored at the same world size; at
  another each rank reseeds deterministically from ``(training.seed, rank, step)``).

Modules: ``manifest`` (checksums while writing, verification), ``layout`` (names, ``latest``,
commit rename, pruning), ``failures`` (every failure named), ``storage`` (DCP writer that hashes,
structural check, resolving a path), ``state`` (state dicts, finiteness), ``restore`` (choosing
and verifying what to resume from), ``checkpointer`` (the orchestration), ``verify`` (offline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .failures import (
    CheckpointError,
    CheckpointStorageError,
    NonFiniteStateError,
    NoValidCheckpointError,
)
from .layout import (
    DCP_METADATA,
    LATEST,
    META_FILE,
    checkpoint_root,
    committed_dirs,
    dir_bytes,
    install,
    prune,
    read_latest,
    read_meta,
    remove_stale_tmp,
    step_dir_name,
    write_atomic,
)
from .manifest import MANIFEST_FILE, verify_dir
from .storage import find_valid, problem, resolve, structure_problem

if TYPE_CHECKING:
    from .checkpointer import Checkpointer

__all__ = [
    "DCP_METADATA", "LATEST", "MANIFEST_FILE", "META_FILE", "CheckpointError", "CheckpointStorageError",
    "Checkpointer", "NoValidCheckpointError", "NonFiniteStateError", "checkpoint_root", "committed_dirs",
    "dir_bytes", "find_latest", "find_valid", "install", "problem", "prune", "read_latest", "read_meta",
    "remove_stale_tmp", "resolve", "step_dir_name", "structure_problem", "verify_dir", "write_atomic",
]

find_latest = find_valid  # the name callers knew


def __getattr__(name: str) -> Any:
    if name == "Checkpointer":  # imports torch.distributed lazily
        from .checkpointer import Checkpointer

        return Checkpointer
    raise AttributeError(name)
