"""Rank-side code of the trainer tests: ``python -m tests.trainer.worker TARGET WORKDIR``.

Each target reads ``WORKDIR/payload.json``, runs in an already-formed process group (one per
process, reused across the configs of a payload) and writes ``WORKDIR/result<RANK>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from kubetrain_trainer import config, distributed
from kubetrain_trainer.engine import Trainer
from kubetrain_trainer.errors import TrainerError
from kubetrain_trainer.faults import Faults
from kubetrain_trainer.models import build_model


def _full_params(trainer: Trainer) -> torch.Tensor:
    """All parameters (gathered from FSDP shards) as one flat fp32 vector, in FQN order."""
    tensors = []
    for _, p in sorted(trainer.par.inner.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        tensors.append(t.float().flatten().cpu())
    return torch.cat(tensors)


def _reference_grad_norm(spec: dict[str, Any]) -> float:
    """Grad norm of step 1 on one process, no wrappers: the mean loss over the whole global batch."""
    cfg = config.from_spec(spec)
    torch.manual_seed(cfg.training.seed)
    built = build_model(cfg.model)
    from kubetrain_trainer.data import SyntheticCorpus

    corpus = SyntheticCorpus(cfg.shape.vocab_size, cfg.shape.seq_len, cfg.training.seed)
    batch = torch.from_numpy(corpus.get(range(cfg.global_batch_size)))
    logits = built.module(batch[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
    grads = [p.grad for p in dict.fromkeys(built.module.parameters()) if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))


def run_configs(payload: dict[str, Any], ctx: distributed.DistContext, workdir: Path) -> Any:
    results = []
    for i, run in enumerate(payload["runs"]):
        cfg = config.from_spec(run["spec"], world_size=ctx.world_size)
        f = run.get("faults", {})
        faults = Faults(frozenset(f.get("inf_grad_steps", ())), frozenset(f.get("nan_loss_steps", ())), f.get("rank", 0))
        trainer = Trainer(cfg, ctx, None, faults=faults)
        out: dict[str, Any] = {"label": run.get("label", str(i))}
        try:
            summary = trainer.fit()
            out["history"] = [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "loss_scale", "skipped",
                                               "skipped_steps")} | ({"eval_loss": r["eval_loss"]} if "eval_loss" in r else {})
                              for r in summary.history]
            out["applied_steps"] = summary.applied_steps
            params = _full_params(trainer)
            if ctx.is_main and payload.get("save_params"):
                torch.save(params, workdir / f"params_{i}.pt")
            out["param_sum"] = float(params.double().sum())
        except TrainerError as e:
            out["error"] = {"type": type(e).__name__, "exit_code": e.exit_code, "message": str(e)}
        finally:
            trainer.close()
        results.append(out)
    ref = None
    if payload.get("reference_grad_norm") and ctx.is_main:
        ref = _reference_grad_norm(payload["runs"][0]["spec"])
    return {"runs": results, "reference_grad_norm": ref}


TARGETS = {"run_configs": run_configs}


def main() -> None:
    target, workdir = sys.argv[1], Path(sys.argv[2])
    payload = json.loads((workdir / "payload.json").read_text())
    ctx = distributed.init(0, 120)
    result = TARGETS[target](payload, ctx, workdir)
    (workdir / f"result{ctx.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
