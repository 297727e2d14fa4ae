"""The DCP state dict of a trainer (one logical layout for every strategy, so resharding is DCP's
job), applying a loaded one, and the finiteness check before a save."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine import Trainer



def _optimizer_target(trainer: Trainer) -> Any:
    """The optimizer whose state this rank holds: zero1's local shard optimizer, else the optimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    opt = trainer.optimizer
    return opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, **kw)


def per_replica(trainer: Trainer) -> bool:
    """Sync modes without a gradient all-reduce (localSGD, DiLoCo): each rank's optimizer state (and,
    between syncs, its parameters) is its own."""
    from ..sync import replicate_only

    return replicate_only(trainer.cfg.sync_mode)


def state_dict(trainer: Trainer, *, optimizer: bool, rng: bool, sync: bool = False,
               replica: int | None = None) -> dict[str, Any]:
    """The DCP state dict of this rank (tensors are the live ones: load writes into them).  ``sync``
    (saving only): the sync mode's state, which a load reads by the checkpoint's own keys.
    ``replica``: model and optimizer as replica ``replica``'s ``local.rank<i>`` entries instead of
    the shared ``model`` / ``optim`` (saving in a per-replica mode adds them to ``model``)."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = trainer.par.inner
    weights = get_model_state_dict(model, options=_options())
    out: dict[str, Any] = {}
    optim = None
    if optimizer:
        optim = get_optimizer_state_dict(
            model, _optimizer_target(trainer), options=_options(flatten_optimizer_state_dict=True)
        )
    if replica is None:
        out["model"] = weights
        if optim is not None:
            out["optim"] = optim
    else:
        out["local"] = {f"rank{replica}": {"model": weights, **({"optim": optim} if optim is not None else {})}}
        if sync:  # saving: the shared copy too (one replica's; what export, initFrom and resharding read)
            out["model"] = weights
    syncer = getattr(trainer, "syncer", None)
    if sync and syncer is not None:
        out["sync"] = syncer.state_dict()
    if rng:
        gens: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if trainer.ctx.device.type == "cuda":
            gens["cuda"] = torch.cuda.get_rng_state(trainer.ctx.device)
        out["rng"] = {f"rank{trainer.ctx.rank}": gens}
    return out


def _load_local_optimizer(trainer: Trainer, flat: dict[str, Any]) -> None:
    """zero1: fill the local optimizer's state from the flattened, name-keyed checkpoint entries
    (DCP's unflatten cannot handle a parameter group that ZeRO left empty on this rank)."""
    local = _optimizer_target(trainer)
    names = {p: n for n, p in trainer.par.inner.named_parameters()}
    sd = local.state_dict()
    index = 0
    for group in local.param_groups:
        for p in group["params"]:
            fqn = names[p]
            for key in list(sd["state"].get(index, {})):
                sd["state"][index][key] = flat[f"state.{fqn}.{key}"]
            index += 1
    local.load_state_dict(sd)


def apply_loaded(trainer: Trainer, loaded: dict[str, Any], *, optimizer: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = trainer.par.inner
    set_model_state_dict(model, loaded["model"], options=_options())
    if not optimizer:
        return
    if isinstance(trainer.optimizer, ZeroRedundancyOptimizer):
        _load_local_optimizer(trainer, loaded["optim"])
    else:
        set_optimizer_state_dict(
            model, trainer.optimizer, loaded["optim"], options=_options(flatten_optimizer_state_dict=True)
        )


def load_sync(trainer: Trainer, path: Path) -> None:
    """The sync mode's state, whatever keys it had when saved (it need not match the live object's:
    DiLoCo's momentum exists only after the first outer step), read whole on every rank."""
    syncer = getattr(trainer, "syncer", None)
    if syncer is None:
        return
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = None
    if any(key.startswith("sync.") for key in keys):
        state = _load_state_dict_from_keys({"sync"}, checkpoint_id=str(path)).get("sync")
    syncer.load_state_dict(state)


def reseed(trainer: Trainer, step: int) -> None:
    """The RNG policy when a checkpoint comes from another world size: a fresh deterministic stream
    per (seed, data-parallel rank, step) (the tp ranks of a group share theirs, as at the start)."""
    import torch

    seed = (trainer.cfg.training.seed + 1 + trainer.dp_rank) * 1_000_003 + step
    torch.manual_seed(seed % (2**63))


def non_finite(state: dict[str, Any], world: int) -> list[str]:
    """Entries of ``state`` (this rank's shards of the model and optimizer) holding a NaN or an
    infinity, agreed across ranks: [] on every rank when all are finite.  One read of the state
    (cheap next to writing it) and one small all-reduce."""
    import torch

    bad: list[str] = []
    for name, tensor in _floating(state, ""):
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        # One summing pass (no temporary): a finite sum means every element is finite; only a
        # non-finite sum (a NaN/inf, or an overflow of huge finite values) pays the exact check.
        if local.numel() and not bool(torch.isfinite(local.sum())) and not bool(torch.isfinite(local).all()):
            bad.append(name)
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([float(len(bad))])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag)
        if flag.item() and not bad:
            bad = ["(another rank's shard)"]
    return bad


def _floating(tree: Any, prefix: str) -> Any:
    import torch

    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("rng",) and not prefix:
                continue
            yield from _floating(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, torch.Tensor) and tree.is_floating_point():
        yield prefix, tree


FORMAT_VERSION = 1


def build_meta(trainer: Trainer, step: int, world: int) -> dict[str, Any]:
    """``kubetrain.json``: what a resume, an export or a person needs besides the tensors."""
    import time

    t = trainer
    return {
        "format": FORMAT_VERSION,
        "step": step,
        "world_size": world,
        "tensor_parallel": t.cfg.parallel.tensor_parallel,
        "pipeline_parallel": t.cfg.parallel.pipeline_parallel,
        "strategy": t.cfg.strategy,
        "precision": t.cfg.dtype,
        "global_batch_size": t.cfg.global_batch_size,
        "sync_mode": t.cfg.sync_mode,
        "per_replica": per_replica(t),
        "trainer": t.trainer_state(),
        "model": t.cfg.model_summary(),
        "job": t.cfg.name,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
