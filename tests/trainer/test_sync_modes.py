"""Communication-light sync modes (``spec.parallelism.sync``): localSGD, DiLoCo, PowerSGD.

Equalities on 2 real gloo processes, tiny GPT, accumulation 2 per rank:
- localSGD with syncEvery 1 and plain SGD is allreduce ddp (averaging parameters after a linear
  update is averaging the gradients);
- localSGD syncEvery 4: replicas identical right after a sync step, different in between;
- DiLoCo with outerLr 1 and outerMomentum 0 is localSGD (Δ = θ_global - mean θ_r, so the outer
  step lands exactly on the average: sign and scale of the pseudo-gradient);
- DiLoCo and PowerSGD train, with comm_bytes below allreduce's by the factor the sizes predict.
Traffic is measured, not taken from the trainer: each rank wraps torch.distributed's collectives
with a counter (the bytes of every tensor handed to them, and whether that tensor is the flattened
parameters or something else, e.g. gradients); a DDP model without a comm hook of its own gets
torch's default all-reduce hook, so that its gradient buckets pass through the counter too.
- PowerSGD survives a NaN step (error feedback and warm-start factors reset on a skipped step).
This file is also the rank-side program: ``python -m tests.trainer.test_sync_modes WORKDIR``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .harness import run_processes

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

BASE: dict[str, Any] = {
    "model": {"preset": "tiny"},
    "training": {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 2, "gradientClipping": 0},
}
SGD = {"type": "SGD", "lr": 0.5}
ADAMW = {"type": "AdamW", "lr": 3e-3}
LONG = 60  # steps of the training runs
DILOCO_EVERY = 10
POWERSGD = {"rank": 1, "startStep": 5}


def _spec(optimizer: dict[str, Any], sync: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["optimizer"] = dict(optimizer)
    spec["training"].update(training)
    if sync is not None:
        spec["parallelism"] = {"strategy": "ddp", "sync": sync}
    return spec


RUNS: dict[str, dict[str, Any]] = {
    "ddp-sgd": _spec(SGD),
    "local1-sgd": _spec(SGD, {"mode": "localSGD", "localSGD": {"syncEvery": 1}}),
    "local4": _spec(ADAMW, {"mode": "localSGD", "localSGD": {"syncEvery": 4}}),
    "diloco4-plain": _spec(
        ADAMW, {"mode": "diloco", "diloco": {"syncEvery": 4, "outerLr": 1.0, "outerMomentum": 0.0}}
    ),
    "ddp-long": _spec(ADAMW, maxSteps=LONG),
    "diloco-long": _spec(
        ADAMW, {"mode": "diloco", "diloco": {"syncEvery": DILOCO_EVERY, "outerLr": 0.7, "outerMomentum": 0.9}},
        maxSteps=LONG,
    ),
    "powersgd-long": _spec(ADAMW, {"mode": "powerSGD", "powerSGD": POWERSGD}, maxSteps=LONG),
    # a NaN loss on rank 0 at step 8 (compressing since step 3) goes through the hook's error feedback
    "powersgd-nan": _spec(ADAMW, {"mode": "powerSGD", "powerSGD": {"rank": 1, "startStep": 3}}, maxSteps=16),
}
FAULTS = {"powersgd-nan": {"nan_loss_steps": {8}, "rank": 0}}
PER_STEP_PARAMS = ("local4", "diloco4-plain")  # runs whose parameters are kept after every step


# ----------------------------------------------------------------------------- rank side


def _flat_params(trainer: Any) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for _, p in sorted(trainer.par.inner.named_parameters())])


class _Traffic:
    """Counts what this rank hands to torch.distributed's collectives: per call (op, bytes, whether
    the tensor equals the trainable parameters flattened in the trainer's order), cut per step."""

    # op -> index of the tensor whose bytes go out (all_gather*/reduce_scatter*: the input)
    OPS = {"all_reduce": 0, "broadcast": 0, "all_gather": 1, "all_gather_into_tensor": 1,
           "reduce_scatter": 1, "reduce_scatter_tensor": 1}

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.params: list[torch.Tensor] = []

    def install(self) -> None:
        import torch.distributed as dist

        for op, arg in self.OPS.items():
            setattr(dist, op, self._wrap(op, arg, getattr(dist, op)))

    def _wrap(self, op: str, arg: int, real: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            t = args[arg] if len(args) > arg else next(iter(kwargs.values()))
            ts = t if isinstance(t, list) else [t]
            nbytes = sum(x.numel() * x.element_size() for x in ts)
            self.calls.append((op, nbytes, len(ts) == 1 and self._is_params(ts[0])))
            return real(*args, **kwargs)

        return counted

    def _is_params(self, t: torch.Tensor) -> bool:
        if not self.params or t.numel() != sum(p.numel() for p in self.params):
            return False
        return torch.equal(t.detach().flatten().float(), torch.cat([p.detach().float().flatten() for p in self.params]))

    def watch(self, trainer: Any) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel

        self.params = [p for p in trainer.par.params if p.requires_grad]
        module = trainer.par.module
        if isinstance(module, DistributedDataParallel) and trainer.syncer.mode == "allreduce":
            # torch's default hook: the same bucket all-reduce as DDP's C++ path, through dist.all_reduce
            module.register_comm_hook(None, default_hooks.allreduce_hook)
        self.calls = []  # what the setup sent (DDP's initial broadcast runs in C++ anyway)

    def cut(self) -> list[tuple[str, int, bool]]:
        calls, self.calls = self.calls, []
        return calls


def _rank_main(workdir: Path) -> None:
    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.engine import Trainer
    from kubetrain_trainer.faults import Faults

    ctx = distributed.init(0, 120)
    traffic = _Traffic()
    traffic.install()
    result: dict[str, Any] = {}
    for label, spec in RUNS.items():
        f = FAULTS.get(label, {})
        faults = Faults(nan_loss_steps=frozenset(f.get("nan_loss_steps", ())), rank=f.get("rank", 0))
        trainer = Trainer(config.from_spec(spec, world_size=ctx.world_size), ctx, None, faults=faults)
        snapshots: list[torch.Tensor] = []
        steps: list[list[tuple[str, int, bool]]] = []
        if label in PER_STEP_PARAMS:
            trainer.callbacks.append(lambda t, rec, s=snapshots: s.append(_flat_params(t)))
        trainer.callbacks.append(lambda t, rec, s=steps: s.append(traffic.cut()))
        traffic.watch(trainer)
        try:
            history = trainer.fit().history
        finally:
            trainer.close()
        result[label] = {
            "loss": [h["loss"] for h in history],
            "comm_bytes": [h["comm_bytes"] for h in history],
            "identical": [trainer.syncer.replicas_identical(h["step"]) for h in history],
            "skipped": [h["step"] for h in history if h["skipped"]],
            "traffic": steps,
        }
        torch.save({"final": _flat_params(trainer), "steps": snapshots}, workdir / f"{label}.rank{ctx.rank}.pt")
    (workdir / f"result{ctx.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()
    sys.stdout.flush()
    os._exit(0)


# ----------------------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    workdir = tmp_path_factory.mktemp("sync")
    run_processes([sys.executable, "-m", "tests.trainer.test_sync_modes", str(workdir)], 2, workdir, timeout=240)
    r0, r1 = (json.loads((workdir / f"result{r}.json").read_text()) for r in range(2))
    assert r0 == r1, "ranks disagree about the global loss or comm_bytes"
    return r0, workdir


def _params(workdir: Path, label: str, rank: int = 0) -> dict[str, Any]:
    return dict(torch.load(workdir / f"{label}.rank{rank}.pt"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


STATS_BYTES = 64  # the per-step statistics all-reduce (loss, grad norm, a few flags): a handful of fp32


def _measured(res: dict[str, Any], label: str) -> list[dict[str, int]]:
    """Per step, from the counted collectives: bytes of all-reduces of the parameters themselves, of
    all other all-reduces larger than the statistics vector (gradients, PowerSGD factors), of
    broadcasts and of anything else; and the number of small (statistics) all-reduces."""
    out = []
    for calls in res[label]["traffic"]:
        m = {"params": 0, "other_allreduce": 0, "stats": 0, "broadcast": 0, "else": 0}
        for op, nbytes, is_params in calls:
            if op == "all_reduce" and is_params:
                m["params"] += nbytes
            elif op == "all_reduce" and nbytes <= STATS_BYTES:
                m["stats"] += 1
            elif op == "all_reduce":
                m["other_allreduce"] += nbytes
            else:
                m["broadcast" if op == "broadcast" else "else"] += nbytes
        out.append(m)
    return out


def _param_bytes() -> int:
    return 4 * _powersgd_step_elements(POWERSGD["rank"])[0]  # fp32, tied weights once


def test_local_sgd_every_step_is_allreduce(runs: tuple[dict[str, Any], Path]) -> None:
    res, workdir = runs
    assert res["local1-sgd"]["loss"] == pytest.approx(res["ddp-sgd"]["loss"], rel=1e-5)
    ref = _params(workdir, "ddp-sgd")["final"]
    for rank in (0, 1):
        diff = _max_diff(_params(workdir, "local1-sgd", rank)["final"], ref)
        assert diff < 2e-5, f"localSGD(syncEvery=1) differs from allreduce ddp by {diff} on rank {rank}"
    # ... and it did not get there by all-reducing gradients: one all-reduce of the parameters
    # themselves per step, no other large collective; ddp all-reduces Ψ bytes of gradients instead.
    psi = _param_bytes()
    local, ddp = _measured(res, "local1-sgd"), _measured(res, "ddp-sgd")
    start = {"params": 0, "other_allreduce": 0, "stats": 1, "broadcast": psi, "else": 0}  # rank 0's weights
    every = {"params": psi, "other_allreduce": 0, "stats": 1, "broadcast": 0, "else": 0}
    assert local == [start | {"params": psi}] + [every] * 7, local
    assert ddp == [{"params": 0, "other_allreduce": psi, "stats": 1, "broadcast": 0, "else": 0}] * 8, ddp
    # The trainer's own comm_bytes report agrees with what was measured.
    assert res["local1-sgd"]["comm_bytes"] == [m["params"] for m in local]
    assert res["ddp-sgd"]["comm_bytes"] == [m["other_allreduce"] for m in ddp]


def test_local_sgd_replicas_agree_only_after_sync(runs: tuple[dict[str, Any], Path]) -> None:
    """Every rank's parameters after every step (saved by each rank itself): identical exactly after
    the sync steps, different in between; the parameter all-reduce happens at those steps only."""
    res, workdir = runs
    s0, s1 = _params(workdir, "local4", 0)["steps"], _params(workdir, "local4", 1)["steps"]
    assert len(s0) == len(s1) == 8
    same = [torch.equal(a, b) for a, b in zip(s0, s1, strict=True)]
    assert same == [False, False, False, True] * 2, f"replicas identical after steps {same}"
    for step, (a, b) in enumerate(zip(s0, s1, strict=True), start=1):
        if not same[step - 1]:
            assert _max_diff(a, b) > 1e-4, f"replicas nearly identical at step {step}, between syncs"
    # The syncer's claim about the replicas is what the parameters show.
    assert res["local4"]["identical"] == same
    psi = _param_bytes()
    measured = _measured(res, "local4")
    assert [m["params"] for m in measured] == [psi if s else 0 for s in same], measured
    assert all(m["other_allreduce"] == m["else"] == 0 and m["stats"] == 1 for m in measured), measured
    assert res["local4"]["comm_bytes"] == [m["params"] for m in measured]


def test_diloco_plain_outer_step_is_local_sgd(runs: tuple[dict[str, Any], Path]) -> None:
    """outerLr 1, momentum 0: θ_global - 1·(θ_global - mean θ_r) = mean θ_r. A flipped pseudo-gradient
    sign or a sum instead of a mean moves far away; fp rounding of the subtraction stays tiny."""
    _, workdir = runs
    local, diloco = _params(workdir, "local4")["steps"], _params(workdir, "diloco4-plain")["steps"]
    for step in range(1, 9):
        diff = _max_diff(diloco[step - 1], local[step - 1])
        assert diff < 1e-5, f"diloco(outerLr=1, momentum=0) differs from localSGD by {diff} at step {step}"
    d1 = _params(workdir, "diloco4-plain", 1)["steps"]
    assert torch.equal(diloco[3], d1[3]) and torch.equal(diloco[7], d1[7])  # θ_global alike on every rank
    # Between syncs the runs are not trivially equal to the initial parameters.
    assert _max_diff(local[3], local[0]) > 1e-4


def _powersgd_step_elements(rank: int) -> tuple[int, int]:
    """(full, compressed) elements per step for the tiny GPT, from torch's rule: a gradient viewed as
    (rows, rest) goes as P (rows·r) + Q (rest·r) when 2·(rows + rest)·r < rows·rest, else whole."""
    from kubetrain_trainer import config
    from kubetrain_trainer.models import build_model

    built = build_model(config.from_spec({"model": {"preset": "tiny"}}).model)
    full = compressed = 0
    for p in dict.fromkeys(built.module.parameters()):
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, rank)
        full += p.numel()
        compressed += (n + m) * r if 2 * (n + m) * r < n * m else p.numel()
    return full, compressed


def test_diloco_and_powersgd_train_with_less_traffic(runs: tuple[dict[str, Any], Path]) -> None:
    res, _ = runs
    ref = res["ddp-long"]
    for label in ("ddp-long", "diloco-long", "powersgd-long"):
        loss = res[label]["loss"]
        assert len(loss) == LONG
        assert sum(loss[-5:]) / 5 < 0.75 * loss[0], f"{label} did not train: {loss[0]:.3f} -> {loss[-5:]}"
    # (PowerSGD is lossy: rank 1 under AdamW trains clearly, but slower than the exact all-reduce.)
    # Measured traffic: ddp all-reduces Ψ bytes of gradients every step; DiLoCo the parameters
    # every DILOCO_EVERY steps and nothing large in between; PowerSGD Ψ before startStep, then
    # the factors and the uncompressed vectors only.
    full, compressed = _powersgd_step_elements(POWERSGD["rank"])
    ddp, diloco, psgd = (_measured(res, k) for k in ("ddp-long", "diloco-long", "powersgd-long"))
    assert [(m["other_allreduce"], m["params"]) for m in ddp] == [(4 * full, 0)] * LONG
    assert [(m["other_allreduce"], m["params"]) for m in diloco] == [
        (0, 4 * full if s % DILOCO_EVERY == 0 else 0) for s in range(1, LONG + 1)]
    start = POWERSGD["startStep"]
    assert [(m["other_allreduce"], m["params"]) for m in psgd] == [(4 * full, 0)] * start + [
        (4 * compressed, 0)] * (LONG - start)
    for m in ddp + diloco + psgd:
        assert m["stats"] == 1 and m["else"] == 0, m
    assert all(m["broadcast"] == 0 for m in ddp + psgd) and [m["broadcast"] for m in diloco[1:]] == [0] * (LONG - 1)
    assert full / compressed > 20  # the saving is real on this model (rank 1)
    # The trainer's comm_bytes report is what was measured.
    assert ref["comm_bytes"] == [m["other_allreduce"] for m in ddp]
    assert res["diloco-long"]["comm_bytes"] == [m["params"] for m in diloco]
    assert res["powersgd-long"]["comm_bytes"] == [m["other_allreduce"] for m in psgd]


def test_powersgd_recovers_from_a_non_finite_step(runs: tuple[dict[str, Any], Path]) -> None:
    """A NaN gradient passes through the hook into error feedback and the warm-start factors; without
    the reset on a skipped step every later step would be NaN too (and the run fail with exit 65)."""
    res, workdir = runs
    run = res["powersgd-nan"]
    assert run["skipped"] == [8]
    assert all(math.isfinite(x) for i, x in enumerate(run["loss"], start=1) if i != 8)
    assert run["loss"][-1] < run["loss"][0] - 0.3
    assert torch.equal(_params(workdir, "powersgd-nan", 0)["final"], _params(workdir, "powersgd-nan", 1)["final"])


# ----------------------------------------------------------------------------- one process


def test_spec_errors_name_the_field() -> None:
    from kubetrain_trainer import config
    from kubetrain_trainer.errors import SpecError

    bad = {"parallelism": {"sync": {"mode": "powerSGD", "powerSGD": {"startStep": 1}}}}
    with pytest.raises(SpecError, match=r"spec\.parallelism\.sync\.powerSGD\.startStep: must be >= 2") as err:
        config.from_spec(bad)
    assert err.value.exit_code == 64
    with pytest.raises(SpecError, match="strategy ddp") as err:
        config.from_spec({"parallelism": {"strategy": "zero2", "sync": {"mode": "localSGD"}}})
    assert err.value.exit_code == 64
    cfg = config.from_spec({"parallelism": {"sync": {"mode": "diloco", "diloco": {"syncEvery": 3}}}})
    diloco = cfg.sync.diloco
    assert diloco is not None and (cfg.sync_mode, diloco.sync_every) == ("diloco", 3)
    assert (diloco.outer_lr, diloco.outer_momentum) == (0.7, 0.9)  # the model's defaults


def test_diloco_resume_mid_period_is_exact() -> None:
    """Model + optimizer + trainer_state + syncer.state_dict() resume DiLoCo bit-exactly (one process:
    the outer step still runs, on θ_global and its momentum, which a resume must not lose)."""
    from kubetrain_trainer import config
    from kubetrain_trainer.distributed import DistContext
    from kubetrain_trainer.engine import Trainer

    ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo")
    spec = _spec(ADAMW, {"mode": "diloco", "diloco": {"syncEvery": 3, "outerLr": 0.7, "outerMomentum": 0.9}},
                 maxSteps=10, microBatchSize=4)
    cfg = config.from_spec(spec)
    a = Trainer(cfg, ctx, None, keep_history=False)
    for _ in range(7):  # two outer steps (momentum built up), then one inner step into the period
        a.train_step()
    saved = copy.deepcopy({
        "model": a.par.inner.state_dict(), "optim": a.optimizer.state_dict(),
        "trainer": a.trainer_state(), "sync": a.syncer.state_dict(),
    })
    assert saved["sync"]["outer_steps"] == 2 and saved["sync"]["outer_momentum"]
    a.fit()
    b = Trainer(cfg, ctx, None, keep_history=False)
    b.par.inner.load_state_dict(saved["model"])
    b.optimizer.load_state_dict(saved["optim"])
    b.load_trainer_state(saved["trainer"])
    b.syncer.load_state_dict(saved["sync"])
    b.fit()
    assert b.step == a.step == 10
    assert torch.equal(_flat_params(a), _flat_params(b))
    a.close()
    b.close()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
