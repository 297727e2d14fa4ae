"""Rank-side code of tests/trainer/test_tensor_parallel.py: ``python -m tests.trainer.tp_worker WORKDIR``.

Reads ``WORKDIR/payload.json``: ``runs`` (trained in turn in this process group, each rank's loss and
grad-norm history returned) and ``states`` (specs built, trained one step, and measured: local
elements of every parameter vs its global size, bytes of parameters, gradients and optimizer state
held by this rank). Writes ``WORKDIR/result<RANK>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from kubetrain_trainer import config, distributed
from kubetrain_trainer.engine import Trainer


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _states(trainer: Trainer) -> dict[str, Any]:
    params = trainer.par.params
    state_bytes = 0
    for st in trainer.optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                state_bytes += _local(v).numel() * _local(v).element_size()
    return {
        "fractions": {
            name: _local(p).numel() / p.numel() for name, p in trainer.par.inner.named_parameters()
        },
        "tp_placements": {
            name: [str(pl) for pl in p.placements] for name, p in trainer.par.inner.named_parameters()
            if isinstance(p, DTensor)
        },
        "params_bytes": sum(_local(p).numel() * _local(p).element_size() for p in params),
        "grads_bytes": sum(_local(g).numel() * _local(g).element_size() for g in trainer.par.grads()),
        "optimizer_bytes": state_bytes,
    }


def main() -> None:
    workdir = Path(sys.argv[1])
    payload = json.loads((workdir / "payload.json").read_text())
    ctx = distributed.init(0, 120)
    out: dict[str, Any] = {"runs": [], "states": []}
    for run in payload.get("runs", []):
        trainer = Trainer(config.from_spec(run["spec"], world_size=ctx.world_size), ctx, None)
        try:
            summary = trainer.fit()
            out["runs"].append({"label": run["label"], "loss": [r["loss"] for r in summary.history],
                                "grad_norm": [r["grad_norm"] for r in summary.history]})
        finally:
            trainer.close()
    for run in payload.get("states", []):
        trainer = Trainer(config.from_spec(run["spec"], world_size=ctx.world_size), ctx, None)
        try:
            trainer.train_step()  # gradients are freed by zero_grad(set_to_none): measure them in a hook
            out["states"].append({"label": run["label"], **_states_after_backward(trainer)})
        finally:
            trainer.close()
    (workdir / f"result{ctx.rank}.json").write_text(json.dumps(out))
    distributed.shutdown()
    sys.stdout.flush()
    os._exit(0)


def _states_after_backward(trainer: Trainer) -> dict[str, Any]:
    """Parameters and optimizer state as they are after a step, gradients as the step held them
    (the forward/backward of one more batch, without the optimizer step)."""
    batch = trainer.loader.step_batch(trainer.step)
    trainer.par.module.train()
    trainer._forward_backward(batch, 1.0)
    measured = _states(trainer)
    trainer.optimizer.zero_grad(set_to_none=True)
    return measured


if __name__ == "__main__":
    main()
