"""Checkpoints: exact resume, resharding across world sizes and strategies, atomic commit (a truncated
checkpoint is skipped, a save killed half-way never becomes ``latest``), initFrom and the safetensors
export.  Real processes of ``python -m kubetrain_trainer`` on CPU + gloo."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetrain_trainer import checkpoint as ck

from .harness import REPO, base_env
from .procs import TRAINER, metrics, run_trainer, start_ranks, train_here, wait_for, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

TINY = {"preset": "tiny", "seqLen": 32}


def _spec(strategy: str, max_steps: int, *, gbs: int = 12, interval: int = 0, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": dict(TINY),
        "training": {"maxSteps": max_steps, "globalBatchSize": gbs, "gradientClipping": 1.0},
        "parallelism": {"strategy": strategy},
        "optimizer": {"type": "AdamW", "lr": 3e-3, "weightDecay": 0.1},
        "lrSchedule": {"type": "WarmupLR", "params": {"warmup_num_steps": 5, "warmup_type": "linear"}},
        "checkpoint": {"intervalSteps": interval, "keep": 3},
    }
    for key, value in extra.items():
        spec[key] = value | spec.get(key, {}) if isinstance(value, dict) else value
    return spec


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The model entries of a checkpoint, consolidated in this process (no process group)."""
    keys = {k for k in _dcp_keys(path) if k.startswith("model.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        sd = _load_state_dict_from_keys(keys, checkpoint_id=str(path))
    return dict(sd["model"])


def _dcp_keys(path: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def _losses(recs: list[dict[str, Any]]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in recs}


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """20 steps straight == 10 steps + checkpoint + resume for 10: bit-identical losses, gradient
    norms and weights (zero1 on 2 ranks, dropout on: the per-rank RNG state is restored too).  The
    step-10 save is asynchronous: training goes on while it is written, and what it holds is step 10."""
    spec = _spec("zero1", 20, gbs=8, interval=10, model={"dropout": 0.1}, checkpoint={"async": True})
    spec["training"]["microBatchSize"] = 2  # gradient accumulation across the resume
    job = write_job(tmp_path / "job.json", spec)
    straight = tmp_path / "straight"
    _, logs = run_trainer(job, 2, straight)
    ckpts = straight / "checkpoints"
    committed_at = [line for line in logs[0].splitlines() if "step-00000010 committed" in line]
    assert "in the background until step 1" in committed_at[0], logs[0][-3000:]
    assert ck.read_latest(ckpts) == "step-00000020"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000010", "step-00000020"]

    resumed = tmp_path / "resumed"
    shutil.copytree(ckpts / "step-00000010", resumed / "checkpoints" / "step-00000010")
    (resumed / "checkpoints" / "latest").write_text("step-00000010\n")
    run_trainer(job, 2, resumed)
    first, second = metrics(straight), metrics(resumed)
    assert [r["step"] for r in second] == list(range(11, 21))
    assert [(r["loss"], r["grad_norm"], r["lr"]) for r in second] == [(r["loss"], r["grad_norm"], r["lr"]) for r in first[10:]]
    a, b = _model_tensors(ckpts / "step-00000020"), _model_tensors(resumed / "checkpoints" / "step-00000020")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = ck.read_meta(ckpts / "step-00000010")
    assert meta["trainer"]["consumed_samples"] == 80 and meta["world_size"] == 2 and meta["strategy"] == "zero1"
    keys = _dcp_keys(ckpts / "step-00000010")
    assert {"rng.rank0.cpu", "rng.rank1.cpu"} <= set(keys)
    # zero1's optimizer state is sharded by ZeRO: the two ranks' halves make the whole.
    n_params = len([k for k in keys if k.startswith("model.")]) - 1  # the tied head is one parameter
    assert len([k for k in keys if k.startswith("optim.state.") and k.endswith(".exp_avg")]) == n_params


def test_reshard_across_world_sizes_and_strategies(tmp_path: Path) -> None:
    """zero3 on 4 ranks → zero2 on 3 → zero1 on 2 → ddp on 1, two steps each, resuming from the
    previous one's checkpoint: the losses are those of one uninterrupted run at the same global
    batch (12), and so are the final weights."""
    chain = [("zero3", 4), ("zero2", 3), ("zero1", 2), ("ddp", 1)]
    run_dir = tmp_path / "chain"
    for i, (strategy, world) in enumerate(chain):
        job = write_job(tmp_path / f"job{i}.json", _spec(strategy, 2 * (i + 1)))
        if world > 1:
            run_trainer(job, world, run_dir)
        else:  # one rank: in this process (no start-up cost), same code path
            train_here(job, run_dir)
    ref_dir = tmp_path / "reference"
    train_here(write_job(tmp_path / "ref.json", _spec("ddp", 8)), ref_dir)

    got, ref = metrics(run_dir), metrics(ref_dir)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["world_size"] for r in got] == [4, 4, 3, 3, 2, 2, 1, 1]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)
    assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in ref], rel=1e-9)
    a = _model_tensors(run_dir / "checkpoints" / "step-00000008")
    b = _model_tensors(ref_dir / "checkpoints" / "step-00000008")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    # keep=3: the oldest of the four checkpoints is gone
    assert [s for s, _ in ck.committed_dirs(run_dir / "checkpoints")] == [8, 6, 4]


def test_truncated_or_incomplete_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = write_job(tmp_path / "job.json", _spec("ddp", 4, gbs=4, interval=2))
    run_dir = tmp_path / "run"
    train_here(job, run_dir)
    root = run_dir / "checkpoints"
    assert ck.find_latest(root) == (root / "step-00000004", [])
    data = next((root / "step-00000004").glob("*.distcp"))
    with data.open("r+b") as f:  # a checkpoint damaged after it was committed (or a torn copy)
        f.truncate(data.stat().st_size // 2)
    found, warned = ck.find_latest(root)
    assert found == root / "step-00000002"
    assert "the manifest recorded" in warned[0] and "step-00000004" in warned[0] and ".distcp has" in warned[0]
    (root / "step-00000002" / ".metadata").unlink()  # incomplete: DCP's index missing
    assert ck.find_latest(root)[0] is None
    assert ".metadata is missing" in ck.problem(root / "step-00000002")  # type: ignore[operator]

    # The trainer resumes from the newest complete checkpoint and warns about the damaged one.
    run_dir2 = tmp_path / "run2"
    train_here(write_job(tmp_path / "job2.json", _spec("ddp", 6, gbs=4, interval=2)), run_dir2)  # saves 2, 4, 6
    (run_dir2 / "checkpoints" / "step-00000006" / "kubetrain.json").write_text("{")
    with caplog.at_level("WARNING", logger="kubetrain_trainer"):
        train_here(write_job(tmp_path / "job3.json", _spec("ddp", 7, gbs=4, interval=2)), run_dir2)
    assert "failed verification: kubetrain.json has 1 bytes" in caplog.text and "step-00000006" in caplog.text
    assert [r["step"] for r in metrics(run_dir2)][-3:] == [5, 6, 7]  # resumed after step 4
    # The damaged one was moved aside (not overwritten by the new save of step 6).
    assert len(list((run_dir2 / "checkpoints").glob("step-00000006.damaged-*"))) == 1


def test_save_killed_half_way_leaves_previous_latest(tmp_path: Path) -> None:
    """The save of step 4 hangs after its data is written (fault injection); SIGKILL then: ``latest``
    still names step 2, the half-written directory is ignored, and the next start removes it and
    resumes from step 2."""
    job = write_job(tmp_path / "job.json", _spec("zero2", 8, gbs=4, interval=2))
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    argv = [*TRAINER, "--spec", str(job), "--run-dir", str(run_dir)]
    procs = start_ranks(argv, 2, tmp_path / "logs", env={"KUBETRAIN_FAULT_SAVE_HANG_STEP": "4"})
    try:
        wait_for("the step-4 save to hang", lambda: any((p / ".metadata").exists() for p in root.glob("step-00000004.tmp-*")),
                 120, procs)
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert ck.read_latest(root) == "step-00000002"
    assert [s for s, _ in ck.committed_dirs(root)] == [2]
    assert ck.find_latest(root) == (root / "step-00000002", [])
    train_here(write_job(tmp_path / "job2.json", _spec("zero2", 5, gbs=4, interval=2)), run_dir)  # 2 -> 1 rank
    assert not list(root.glob("*.tmp-*"))
    assert [r["step"] for r in metrics(run_dir)][-3:] == [3, 4, 5]
    assert ck.read_latest(root) == "step-00000005"


def _eval_loss_of(weights: dict[str, torch.Tensor], cfg_model: dict[str, Any], seed: int, n: int) -> float:
    """Mean next-token loss of plain GPT weights on the first ``n`` eval samples: what the trainer
    logged as eval_loss for evalBatches=1 on one rank."""
    from kubetrain_trainer.data import SyntheticCorpus
    from kubetrain_trainer.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(**{k: cfg_model[k] for k in ("n_layers", "n_heads", "d_model", "vocab_size", "seq_len")}))
    model.load_state_dict(weights)  # strict: a plain state dict, nothing Kubetrain-specific in it
    batch = torch.from_numpy(SyntheticCorpus(cfg_model["vocab_size"], cfg_model["seq_len"], seed).get(range(n), "eval"))
    with torch.no_grad():
        logits = model(batch[:, :-1])
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()))


def test_init_from_and_safetensors_export(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    spec = _spec("zero3", 4, gbs=4, training={"evalEvery": 4, "evalBatches": 1})
    src = tmp_path / "src"
    run_trainer(write_job(tmp_path / "src.json", spec), 2, src)
    ckpt = src / "checkpoints" / "step-00000004"

    # kubetrain export (fp32): plain safetensors + config.json, equal to the checkpoint's weights
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "kubetrain", "export", str(src), "--format", "safetensors",
                           "-o", str(out)], cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    weights = load_file(out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert config["step"] == 4 and config["dtype"] == "fp32" and config["quantization"] is None
    reference = _model_tensors(ckpt)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in weights)
    # ... and a plain GPT with these weights reproduces the trainer's eval loss at that step
    eval_loss = [r["eval_loss"] for r in metrics(src) if "eval_loss" in r][-1]
    assert _eval_loss_of(weights, config["model"], 1234, 4) == pytest.approx(eval_loss, rel=1e-5)

    from kubetrain_trainer.export import dequantize, export

    export(ckpt, tmp_path / "bf16", dtype="bf16")
    bf16 = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], reference[k].bfloat16()) for k in bf16)
    export(ckpt, tmp_path / "int8", dtype="int8")
    q = load_file(tmp_path / "int8" / "model.safetensors")
    qcfg = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert qcfg["quantization"]["method"] == "int8-symmetric-per-channel"
    w = "blocks.0.mlp.fc.weight"
    assert q[w].dtype == torch.int8 and q[w + "_scale"].shape == (reference[w].shape[0],)
    deq = dequantize(q)
    assert deq.keys() == reference.keys()
    for k, v in reference.items():  # per-row error at most half a quantization step
        err = (deq[k] - v).abs()
        bound = q[k + "_scale"].unsqueeze(1) / 2 + 1e-7 if k + "_scale" in q else torch.tensor(0.0)
        assert bool((err <= bound).all()), k
    assert _eval_loss_of(deq, qcfg["model"], 1234, 4) == pytest.approx(eval_loss, abs=0.05)

    # initFrom weights: a new job starts at step 1 from those weights, fresh optimizer
    dst = tmp_path / "dst"
    init = {"initFrom": {"path": str(src), "mode": "weights"}}
    train_here(write_job(tmp_path / "dst.json", _spec("ddp", 1, gbs=4, checkpoint=init)), dst)
    first = metrics(dst)[0]
    assert first["step"] == 1
    from kubetrain_trainer.data import SyntheticCorpus
    from kubetrain_trainer.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(**{k: config["model"][k] for k in ("n_layers", "n_heads", "d_model", "vocab_size", "seq_len")}))
    model.load_state_dict(weights)
    batch = torch.from_numpy(SyntheticCorpus(256, 32, 1234).get(range(4)))
    with torch.no_grad():
        loss0 = float(torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()))
    assert first["loss"] == pytest.approx(loss0, rel=1e-5)
    # initFrom full: optimizer, schedule and data position too; the source is left alone
    full = tmp_path / "full"
    init = {"initFrom": {"path": str(ckpt), "mode": "full"}}
    train_here(write_job(tmp_path / "full.json", _spec("zero2", 6, gbs=4, checkpoint=init)), full)
    assert [r["step"] for r in metrics(full)] == [5, 6]
    assert ck.read_latest(src / "checkpoints") == "step-00000004"
    assert math.isfinite(metrics(full)[-1]["loss"])


def test_init_from_a_safetensors_file(tmp_path: Path) -> None:
    """checkpoint.initFrom naming a .safetensors file (what `kubetrain export` writes): the weights
    are read without pickle and sliced into this job's shards (2 ranks, zero3), so the first loss is
    the loss of those weights; an int8 export loads dequantized; a file made for another model is one
    line naming the tensor (exit 65), a missing file one line naming the path (exit 64)."""
    from safetensors.torch import load_file, save_file

    from kubetrain_trainer.export import dequantize, export

    src = tmp_path / "src"
    train_here(write_job(tmp_path / "src.json", _spec("ddp", 2, gbs=4, interval=2)), src)
    config = export(src / "checkpoints" / "step-00000002", tmp_path / "fp32")
    export(src / "checkpoints" / "step-00000002", tmp_path / "int8", dtype="int8")
    model_cfg = config["model"]

    def first_loss_from(file: Path, name: str) -> float:
        init = {"initFrom": {"path": str(file)}}
        run = tmp_path / name
        run_trainer(write_job(tmp_path / f"{name}.json", _spec("zero3", 1, gbs=4, checkpoint=init)), 2, run)
        (first,) = metrics(run)
        assert first["step"] == 1
        return float(first["loss"])

    from kubetrain_trainer.data import SyntheticCorpus
    from kubetrain_trainer.models.gpt import GPT, GPTConfig

    def loss_of(weights: dict[str, torch.Tensor]) -> float:
        model = GPT(GPTConfig(**{k: model_cfg[k] for k in ("n_layers", "n_heads", "d_model", "vocab_size", "seq_len")}))
        model.load_state_dict(weights)
        batch = torch.from_numpy(SyntheticCorpus(256, 32, 1234).get(range(4)))
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()))

    fp32 = load_file(tmp_path / "fp32" / "model.safetensors")
    assert first_loss_from(tmp_path / "fp32" / "model.safetensors", "dst") == pytest.approx(loss_of(fp32), rel=1e-5)
    int8 = dequantize(load_file(tmp_path / "int8" / "model.safetensors"))
    assert first_loss_from(tmp_path / "int8" / "model.safetensors", "dst8") == pytest.approx(loss_of(int8), rel=1e-5)

    wrong = dict(fp32, **{"blocks.0.mlp.fc.weight": torch.zeros(3, 5)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    for file, code, needle in [
        (tmp_path / "wrong.safetensors", 65, "tensor blocks.0.mlp.fc.weight has shape [3, 5] in the file but"),
        (tmp_path / "missing.safetensors", 64, f"checkpoint.initFrom.path {tmp_path / 'missing.safetensors'}: "
                                               "no such file"),
    ]:
        init = {"initFrom": {"path": str(file)}}
        run = tmp_path / f"bad-{file.stem}"
        codes, logs = run_trainer(write_job(tmp_path / f"{file.stem}.json", _spec("ddp", 1, gbs=4, checkpoint=init)),
                                  1, run, expect_ok=False)
        assert codes == [code], logs
        assert needle in logs[0] and "Traceback" not in logs[0], logs[0]
        assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("step-*"))


def test_diloco_resume_is_exact_between_syncs(tmp_path: Path) -> None:
    """localSGD/DiLoCo keep per-rank optimizer state (and per-rank parameters between syncs): each
    rank's is checkpointed, so a resume from a step between two syncs is exact too."""
    spec = _spec("ddp", 6, gbs=8, interval=3, parallelism={"sync": {"mode": "diloco", "diloco": {"syncEvery": 2}}})
    job = write_job(tmp_path / "job.json", spec)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_trainer(job, 2, straight)
    shutil.copytree(straight / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    (resumed / "checkpoints" / "latest").write_text("step-00000003\n")
    run_trainer(job, 2, resumed)
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(straight)[3:]]
    keys = _dcp_keys(straight / "checkpoints" / "step-00000006")
    assert any(k.startswith("local.rank1.optim.state.") for k in keys)
    assert any(k.startswith("sync.global_params.") for k in keys)


def test_stop_checkpoint_is_bounded_by_save_timeout(tmp_path: Path) -> None:
    """A stop checkpoint that cannot commit within checkpoint.saveTimeoutSeconds of the SIGTERM gives
    up with a retryable CheckpointTimeout; the previous checkpoint stays latest.

    The injected commit delay (600 s) is far beyond the deadline the process gets to exit (120 s):
    only the save timeout can end it in time. The stop checkpoint's step comes from the failure
    record; its directory never got installed and ``latest`` still names an earlier committed step."""
    spec = _spec("ddp", 100_000, gbs=4, interval=2, checkpoint={"saveTimeoutSeconds": 5})
    job = write_job(tmp_path / "job.json", spec)
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    argv = [*TRAINER, "--spec", str(job), "--run-dir", str(run_dir)]
    env = {"KUBETRAIN_FAULT_STOP_SAVE_SLEEP_SECONDS": "600", "KUBETRAIN_FAULT_STEP_SLEEP_SECONDS": "0.05"}
    (proc,) = start_ranks(argv, 1, tmp_path / "logs", env=env)
    try:
        wait_for("a committed checkpoint", lambda: ck.read_latest(root) is not None, 120, [proc])
        before = _step_of(ck.read_latest(root))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)  # subprocess.TimeoutExpired: the save timeout did not end it
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1, code
    record = json.loads((run_dir / "failures" / "rank0.json").read_text())
    assert record["reason"] == "CheckpointTimeout" and "saveTimeoutSeconds=5" in record["message"], record
    stop_step = int(record["step"])
    assert f"the checkpoint of step {stop_step} did not commit" in record["message"], record
    # The stop save got as far as its temporary directory, which was never installed.
    assert [p for p in root.iterdir() if p.name.startswith(f"{ck.step_dir_name(stop_step)}.tmp-")], \
        sorted(p.name for p in root.iterdir())
    assert not (root / ck.step_dir_name(stop_step)).exists()
    assert stop_step not in [step for step, _ in ck.committed_dirs(root)]
    latest = _step_of(ck.read_latest(root))
    # An interval save may have landed between the read and the signal, never the stop checkpoint.
    assert before <= latest < stop_step, (before, latest, stop_step)
    assert f"the last committed checkpoint is step {latest})" in record["message"], record
    assert ck.find_latest(root)[0] == root / ck.step_dir_name(latest)


def _step_of(name: str | None) -> int:
    assert name is not None, "no latest checkpoint"
    from kubetrain_trainer.checkpoint.layout import STEP_DIR

    m = STEP_DIR.match(name)
    assert m is not None, name
    return int(m.group(1))


# ----------------------------------------------------------------------------- pure pieces (fast)


def test_manifest_checksums_what_was_written_and_detects_each_kind_of_damage(tmp_path: Path) -> None:
    """The checksum is taken from the bytes handed to write() (no second pass) and equals a hash of
    the file read back; a flipped byte, a size change, a missing file and a damaged manifest are
    each reported by name."""
    import io

    from kubetrain_trainer.checkpoint import manifest as mf

    rec = mf.Recorder()
    path = tmp_path / "ck"
    path.mkdir()
    with (path / "data.bin").open("wb") as raw:
        stream = mf.HashingStream(raw, lambda r: rec.add("data.bin", r))
        torch.save(torch.arange(1000, dtype=torch.float32), stream)  # torch writes memoryviews
        stream.write(b"tail")
        stream.close()
    buf = io.BytesIO()
    torch.save(torch.arange(1000, dtype=torch.float32), buf)
    assert rec.files["data.bin"].size == len(buf.getvalue()) + 4 == (path / "data.bin").stat().st_size
    assert rec.files["data.bin"] == mf.hash_file(path / "data.bin")
    (path / "meta.json").write_text("{}")
    files = {**rec.files, "meta.json": mf.hash_file(path / "meta.json")}
    (path / mf.MANIFEST_FILE).write_text(mf.build_manifest(7, files))
    assert mf.verify_dir(path) is None

    data = bytearray((path / "data.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "data.bin").write_bytes(bytes(data))
    assert "data.bin does not match its checksum" in (mf.verify_dir(path) or "")
    (path / "data.bin").write_bytes(bytes(data[:-1]))
    assert "data.bin has" in (mf.verify_dir(path) or "")
    (path / "data.bin").unlink()
    assert "data.bin is missing" in (mf.verify_dir(path) or "")
    text = (path / mf.MANIFEST_FILE).read_text().replace('"step": 7', '"step": 8')
    (path / mf.MANIFEST_FILE).write_text(text)
    assert "does not match its own checksum" in (mf.verify_dir(path) or "")
    (path / mf.MANIFEST_FILE).unlink()
    assert "manifest.json is missing" in (mf.verify_dir(path) or "")
    # Each rank verifies a share: every file exactly once, the big ones spread.
    table = {f"f{i}": mf.FileRecord(size, "x") for i, size in enumerate([100, 90, 10, 5, 1])}
    shares = [mf.share(table, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(table) and "f0" in shares[0] and "f1" in shares[1]


def test_failures_are_named_through_checkpoint_exception() -> None:
    """torch's CheckpointException (a BaseException) wrapping an OSError is named by its errno."""
    import errno

    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from kubetrain_trainer.checkpoint import failures

    def wrapped(code: int) -> BaseException:
        try:
            raise OSError(code, os.strerror(code), "/ckpt/step-00000004.tmp-1/__0_0.distcp")
        except OSError as e:
            return CheckpointException("save failed", {1: _wrap_exception(e)})

    exc = wrapped(errno.ENOSPC)
    assert not isinstance(exc, Exception)
    for code, reason in ((errno.ENOSPC, "CheckpointStorageFull"), (errno.EROFS, "CheckpointStorageReadOnly"),
                         (errno.EACCES, "CheckpointPermissionDenied")):
        named = failures.classify(wrapped(code), "saving the checkpoint of step 4", "/ckpt")
        assert named.reason == reason and named.exit_code == 65, named
        assert "saving the checkpoint of step 4 failed" in str(named) and "__0_0.distcp" in str(named)
    other = failures.classify(CheckpointException("boom", {0: _wrap_exception(RuntimeError("x"))}), "saving", "/ckpt")
    assert other.reason == "CheckpointError" and other.exit_code == 1
    # torch.save turns the OSError into "unexpected pos" and DCP's gather drops __context__: the
    # errno the writing process saw (recorded by its hashing stream) still names it.
    opaque = CheckpointException("save failed", {1: _wrap_exception(RuntimeError("unexpected pos 704 vs 598"))})
    seen = [OSError(errno.ENOSPC, "No space left on device")]
    assert failures.classify(opaque, "saving", "/ckpt", seen).reason == "CheckpointStorageFull"
    assert failures.classify(opaque, "saving", "/ckpt", code=errno.EROFS).reason == "CheckpointStorageReadOnly"
    told = str(failures.classify(opaque, "saving", "/ckpt", code=errno.ENOSPC))
    assert "No space left on device" in told and "Traceback" not in told, told
    assert "rank 1: RuntimeError: unexpected pos" in str(failures.classify(opaque, "saving", "/ckpt"))
    with pytest.raises(KeyboardInterrupt):
        failures.classify(KeyboardInterrupt(), "saving", "/ckpt")


def test_termination_record_is_capped_and_lands_on_a_full_disk(tmp_path: Path) -> None:
    """One JSON line under the kubelet's 4096 bytes whatever the message (the end is kept); written
    over the blanks reserved at start-up, so it needs no new blocks when the disk filled up."""
    from kubetrain_trainer import protocol

    text = protocol.capped_json({"reason": "R", "message": "é" * 9000 + " THE CAUSE", "step": 3})
    assert len(text.encode()) <= protocol.MAX_RECORD_BYTES
    record = json.loads(text)
    assert record["reason"] == "R" and record["step"] == 3 and record["message"].endswith("THE CAUSE")
    term = tmp_path / "termination.json"
    protocol.reserve(term)
    assert term.stat().st_size == protocol.RESERVED_BYTES
    assert protocol.write_in_place(term, text)
    assert json.loads(term.read_text()) == record


def test_run_lock_refuses_another_run_and_admits_its_own(tmp_path: Path) -> None:
    """Another run is refused with the holder's PID; the same run (same lock id) joins; the kernel
    releases the lock when the holder dies."""
    from kubetrain_trainer import runlock

    held = runlock.acquire(tmp_path / "run", "job-a")
    sibling = runlock.acquire(tmp_path / "run", "job-a")  # e.g. the launcher of another pod of the job
    probe = ("from pathlib import Path; from kubetrain_trainer import runlock\n"
             "try:\n runlock.acquire(Path(r'%s'), 'job-b'); print('ACQUIRED')\n"
             "except runlock.RunDirBusy as e: print(e)\n") % (tmp_path / "run")
    env = base_env()
    refused = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert f"is in use by another run (pid {os.getpid()}" in refused.stdout, refused.stdout + refused.stderr
    held.release()
    sibling.release()
    free = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "ACQUIRED" in free.stdout, free.stdout + free.stderr
