"""Pipeline parallelism (issue 20), real processes on CPU + gloo, a tiny GPT of 4 blocks.

- Agreement, fp32, 10 steps, every loss within 2e-5 (relative) of the 1-rank ddp run, gradient
  norms within 1e-4: pp2 (2 ranks) under each schedule (GPipe, 1F1B, Interleaved1F1B,
  ZeroBubble) plus a custom model with its own ``model.pipelineSplit``; pp2 x dp2 (4 ranks) with
  ddp, zero3 and zero2 with gradient clipping (the global norm over both stages); pp2 x dp2 x tp2
  (8 ranks) with zero3 and 1F1B. The evaluation loss agrees too, and every rank reports the same
  loss (the last stage's).
- fp16 at pp2: the loss scale reaches both stages (it trains like fp32, loosely).
- Checkpoints: saved at pp2 x dp2 (Interleaved1F1B, zero3: two stages per rank), resumed at
  pp1 x dp2 and pp1 x dp1, the next 5 losses equal the uninterrupted run's; ``kubetrain export``
  of the pipeline checkpoint has the unsplit model's tensors.

One process launch per world size for the agreement runs (several specs each), four for the
checkpoints; about 2-3 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .harness import PYTHON, REPO, base_env, run_processes
from .procs import metrics, run_trainer, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

REL = 2e-5
STEPS = 10
SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZeroBubble")
ENTRY = {"entrypoint": "tests.trainer.entry_models:tiny_lm", "entrypointArgs": {"d": 32, "n_layers": 4},
         "vocabSize": 256}


def _spec(world: int, pp: int = 1, tp: int = 1, schedule: str | None = None, strategy: str = "ddp", *,
          steps: int = STEPS, clip: float = 0, **extra: Any) -> dict[str, Any]:
    par: dict[str, Any] = {"strategy": strategy}
    if pp > 1:
        par |= {"pipelineParallel": pp, "pipelineSchedule": schedule or "1F1B"}
    if tp > 1:
        par["tensorParallel"] = tp
    spec: dict[str, Any] = {
        "workers": {"procsPerWorker": world},
        "model": {"preset": "tiny", "nLayers": 4},  # 2 heads, vocab 256, tied embeddings
        # 4 micro-batches of 2 at dp1, 2 at dp2 (>= pp for the 1F1B family)
        "training": {"maxSteps": steps, "globalBatchSize": 8, "microBatchSize": 2, "gradientClipping": clip,
                     "evalEvery": steps, "evalBatches": 1},
        "parallelism": par,
        "optimizer": {"type": "AdamW", "lr": 3e-3, "weightDecay": 0.1},
    }
    for key, value in extra.items():
        spec[key] = value
    return spec


def _launch(world: int, runs: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "payload.json").write_text(json.dumps({"runs": runs}))
    run_processes([PYTHON, "-m", "tests.trainer.pp_worker", str(workdir)], world, workdir, timeout=500)
    return [json.loads((workdir / f"result{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The 1-rank ddp runs every layout must reproduce."""
    runs = [{"label": "plain", "spec": _spec(1)}, {"label": "clip", "spec": _spec(1, clip=0.5)},
            {"label": "entry", "spec": _spec(1, model=ENTRY)}]
    out = _launch(1, runs, tmp_path_factory.mktemp("pp-ref"))
    return {r["label"]: r for r in out[0]["runs"]}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _assert_agree(results: list[dict[str, Any]], reference: dict[str, dict[str, Any]], layout: str,
                  ref_of: dict[str, str]) -> dict[str, float]:
    """Every run of ``results`` (rank 0's) against its reference; returns the worst relative error."""
    for r in results[1:]:  # the last stage's loss reaches every rank
        assert [x["loss"] for x in r["runs"]] == [x["loss"] for x in results[0]["runs"]], "ranks disagree on the loss"
    worst: dict[str, float] = {}
    for run in results[0]["runs"]:
        ref = reference[ref_of.get(run["label"], "plain")]
        assert len(run["loss"]) == len(ref["loss"]) == STEPS
        err = max(_rel(a, b) for a, b in zip(run["loss"], ref["loss"], strict=True))
        assert err < REL, f"{layout} {run['label']}: losses differ from 1-rank ddp by {err:.2e} (relative)"
        norms = max(_rel(a, b) for a, b in zip(run["grad_norm"], ref["grad_norm"], strict=True))
        assert norms < 1e-4, f"{layout} {run['label']}: grad norms differ by {norms:.2e}"
        assert _rel(run["eval_loss"], ref["eval_loss"]) < REL, (layout, run["label"], run["eval_loss"])
        worst[run["label"]] = err
    print(f"{layout}: worst relative loss error {worst}")
    return worst


def test_pp2_every_schedule_agrees(tmp_path: Path, reference: dict[str, dict[str, Any]]) -> None:
    runs = [{"label": s, "spec": _spec(2, 2, schedule=s)} for s in SCHEDULES]
    entry = _spec(2, 2, schedule="1F1B", model=ENTRY | {"pipelineSplit": "tests.trainer.pp_models:tiny_lm_split"})
    runs.append({"label": "entry", "spec": entry})
    runs.append({"label": "fp16", "spec": _spec(2, 2, schedule="1F1B", precision={"dtype": "fp16"})})
    results = _launch(2, runs, tmp_path)
    fp16 = next(r for r in results[0]["runs"] if r["label"] == "fp16")
    results[0]["runs"] = [r for r in results[0]["runs"] if r["label"] != "fp16"]
    results[1]["runs"] = [r for r in results[1]["runs"] if r["label"] != "fp16"]
    _assert_agree(results, reference, "pp2", {"entry": "entry"})
    # the reference learns (not a constant), and fp16 with the scale in the last stage's loss trains alike
    plain = reference["plain"]["loss"]
    assert plain[-1] < plain[0] - 0.5
    assert max(_rel(a, b) for a, b in zip(fp16["loss"], plain, strict=True)) < 0.02, fp16["loss"]
    # stage-local parameters keep the unsplit model's names: rank 0 the embeddings, rank 1 the final
    # norm and the head (named as the tied embedding it is a copy of); Interleaved: blocks 0 and 2 on rank 0
    names = [{n.rsplit(".", 1)[0] for n in r["runs"][0]["names"]} for r in results]
    assert {"tok_emb", "pos_emb", "blocks.0.ln1", "blocks.1.ln1"} <= names[0] and "ln_f" not in names[0]
    assert {"tok_emb", "ln_f", "blocks.3.ln1"} <= names[1] and "pos_emb" not in names[1]
    inter = {n.split(".")[1] for n in results[0]["runs"][2]["names"] if n.startswith("blocks.")}
    assert inter == {"0", "2"}


def test_pp2_dp2_agrees(tmp_path: Path, reference: dict[str, dict[str, Any]]) -> None:
    runs = [{"label": "ddp-GPipe", "spec": _spec(4, 2, schedule="GPipe")},
            {"label": "zero3-Interleaved1F1B", "spec": _spec(4, 2, schedule="Interleaved1F1B", strategy="zero3")},
            {"label": "clip-zero2-1F1B", "spec": _spec(4, 2, schedule="1F1B", strategy="zero2", clip=0.5)}]
    _assert_agree(_launch(4, runs, tmp_path), reference, "pp2 x dp2", {"clip-zero2-1F1B": "clip"})


def test_pp2_dp2_tp2_agrees(tmp_path: Path, reference: dict[str, dict[str, Any]]) -> None:
    runs = [{"label": "zero3-1F1B", "spec": _spec(8, 2, 2, schedule="1F1B", strategy="zero3")}]
    _assert_agree(_launch(8, runs, tmp_path), reference, "pp2 x dp2 x tp2", {})


def _export(ckpt: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "kubetrain", "export", str(ckpt), "--format", "safetensors",
                           "-o", str(out)], cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_checkpoint_reshards_across_pp(tmp_path: Path, reference: dict[str, dict[str, Any]]) -> None:
    def job(name: str, world: int, pp: int, steps: int) -> Path:
        spec = _spec(world, pp, schedule="Interleaved1F1B", strategy="zero3" if pp > 1 else "ddp", steps=steps,
                     checkpoint={"intervalSteps": 5, "keep": 3})
        spec["training"] |= {"evalEvery": 0}
        return write_job(tmp_path / f"{name}.json", spec)

    saved = tmp_path / "pp2dp2"
    run_trainer(job("save", 4, 2, 5), 4, saved, timeout=300)
    assert [r["step"] for r in metrics(saved)][-1] == 5
    assert json.loads((sorted((saved / "checkpoints").glob("step-*"))[-1] / "kubetrain.json").read_text())[
        "pipeline_parallel"] == 2
    uninterrupted = reference["plain"]["loss"][5:10]
    for name, world in (("pp1dp2", 2), ("pp1dp1", 1)):
        run_dir = tmp_path / name
        shutil.copytree(saved, run_dir)
        run_trainer(job(name, world, 1, 10), world, run_dir, timeout=300)
        resumed = {r["step"]: r["loss"] for r in metrics(run_dir)}
        after = [resumed[s] for s in range(6, 11)]
        worst = max(_rel(a, b) for a, b in zip(after, uninterrupted, strict=True))
        print(f"resume at {name}: worst relative error {worst:.2e}")
        assert worst < REL, f"resume at {name}: steps 6-10 differ from the uninterrupted run by {worst:.2e}"
    # export consolidates the stages: the unsplit GPT's tensors (a tied head under both names)
    weights = _export(sorted((saved / "checkpoints").glob("step-*"))[-1], tmp_path / "export")
    assert {"tok_emb.weight", "pos_emb.weight", "head.weight", "ln_f.weight"} <= set(weights)
    assert {f"blocks.{i}.attn.qkv.weight" for i in range(4)} <= set(weights)
    assert tuple(weights["blocks.3.attn.qkv.weight"].shape) == (3 * 64, 64)
