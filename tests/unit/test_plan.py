"""`kubetrain plan` and `kubetrain.api.modelsize`: parameter counts, ZeRO formulas, activations,
GPU tables, fit suggestions and the CLI (which must work without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetrain import api
from kubetrain.api.modelsize import (
    PRESETS,
    GPTSize,
    flops_per_token,
    gpt_flops_per_token,
    gpt_param_breakdown,
    gpt_param_count,
    gpt_size,
    gpu_label,
    gpu_memory_bytes,
    parse_count,
    peak_flops,
)
from kubetrain.tools.plan import (
    GIB,
    PlanError,
    activation_bytes,
    micro_batch_options,
    plan,
    strategy_memory,
    zero_paper_bytes,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "gpu-zero3-bf16.yaml"


def _spec(**spec: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate(spec)


# ------------------------------------------------------------------------ parameter counts

# By hand: V·d (token embedding) + T·d (positions) + L·(4d² attention + 8d² MLP + 2·2d norms)
# + 2d (final norm); the tied head adds nothing. No biases in the linear layers.
HAND_COUNTS = {
    "tiny": 256 * 64 + 64 * 64 + 2 * (12 * 64**2 + 4 * 64) + 2 * 64,
    "124M": 50304 * 768 + 1024 * 768 + 12 * (12 * 768**2 + 4 * 768) + 2 * 768,
    "350M": 50304 * 1024 + 1024 * 1024 + 24 * (12 * 1024**2 + 4 * 1024) + 2 * 1024,
    "1.3B": 50304 * 2048 + 2048 * 2048 + 24 * (12 * 2048**2 + 4 * 2048) + 2 * 2048,
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_counts_match_hand_arithmetic(preset: str) -> None:
    sizes: dict[str, Any] = PRESETS[preset]
    assert gpt_param_count(**sizes) == HAND_COUNTS[preset]


def test_known_totals_and_untied_head() -> None:
    assert HAND_COUNTS["tiny"] == 119_424
    assert HAND_COUNTS["124M"] == 124_392_960
    assert HAND_COUNTS["1.3B"] == 1_315_377_152
    sizes: dict[str, Any] = PRESETS["124M"]
    assert gpt_param_count(**sizes, tie_embeddings=False) - gpt_param_count(**sizes) == 50304 * 768


def test_gpt_size_resolves_preset_then_overrides_like_the_trainer() -> None:
    assert gpt_size() == GPTSize(2, 2, 64, 256, 64)
    size = gpt_size("124M", n_layers=4, seq_len=None, tie_embeddings=False)
    assert (size.n_layers, size.seq_len, size.d_model, size.tie_embeddings) == (4, 1024, 768, False)


def test_presets_equal_the_trainers_table() -> None:
    """The trainer reads kubetrain.api.modelsize's table: one copy, so `plan` describes what it builds."""
    from kubetrain_trainer import config  # pure Python, no torch

    for preset in PRESETS:
        assert config.from_spec({"model": {"preset": preset}}).shape == gpt_size(preset)


def test_flops_per_token_is_6n_plus_attention() -> None:
    size = gpt_size("1.3B")
    n = HAND_COUNTS["1.3B"] - 2048 * 2048  # tied: every parameter but the position embedding
    assert gpt_flops_per_token(size) == 6 * n + 12 * 24 * 2048 * 2048
    assert flops_per_token(n, 24, 2048, 2048) == gpt_flops_per_token(size)
    untied = gpt_size("1.3B", tie_embeddings=False)
    # The untied input embedding is a lookup (no FLOPs); its head is counted once, like the tied one.
    assert gpt_flops_per_token(untied) == gpt_flops_per_token(size)


@pytest.mark.parametrize(
    "sizes",
    [
        *[dict(v, tie_embeddings=True) for v in PRESETS.values()],
        {"n_layers": 3, "n_heads": 4, "d_model": 96, "vocab_size": 1000, "seq_len": 40, "tie_embeddings": False},
    ],
)
def test_count_equals_the_trainers_module(sizes: dict[str, Any]) -> None:
    import torch

    from kubetrain.api import ModelSpec
    from kubetrain_trainer.models import build_model

    with torch.device("meta"):  # no memory, instant even for 1.3B
        built = build_model(ModelSpec(**sizes))
    model = built.module
    n = sum(p.numel() for p in model.parameters())
    assert gpt_param_count(**sizes) == n == built.n_params
    size = GPTSize(**sizes)
    parts = gpt_param_breakdown(size)
    assert parts.per_layer == sum(p.numel() for p in model.blocks[0].parameters())  # type: ignore[index]
    assert built.flops_per_token == gpt_flops_per_token(size)  # the trainer's MFU uses the plan's FLOPs


# ---------------------------------------------------------------------------- ZeRO formulas


def test_zero_paper_figure_1() -> None:
    """ZeRO (Rajbhandari et al. 2020), figure 1: Ψ = 7.5B, N = 64, K = 12 ->
    120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device."""
    psi, n = 7_500_000_000, 64
    got = [zero_paper_bytes(s, psi, n) / 1e9 for s in ("ddp", "zero1", "zero2", "zero3")]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]


def test_our_model_states_fp32_master_and_grads() -> None:
    psi, n = 1_000_000_000, 8
    mem = {s: strategy_memory(s, n_params=psi, world_size=n, dtype="fp32", opt_bytes=8, parts=None,
                              activations=None, usable=None) for s in ("ddp", "zero1", "zero2", "zero3")}
    assert mem["ddp"].total_bytes == 16 * psi  # 4 params + 4 grads + 8 Adam
    assert mem["zero1"].total_bytes == 8 * psi + 8 * psi // n
    assert mem["zero2"].total_bytes == 4 * psi + 16 * psi // n  # the gathered fp32 model + shards
    assert mem["zero3"].total_bytes == 16 * psi // n  # (no block sizes known: no working set)
    mixed = strategy_memory("ddp", n_params=psi, world_size=n, dtype="bf16", opt_bytes=8, parts=None,
                            activations=None, usable=None)
    assert mixed.total_bytes == 18 * psi  # + autocast's bf16 weight copies
    assert mixed.paper_bytes == 16 * psi  # the paper's 2 + 2 + 12


def test_zero3_working_set_is_root_plus_prefetched_blocks() -> None:
    parts = gpt_param_breakdown(gpt_size("1.3B"))
    psi, n = parts.total, 32
    mem = strategy_memory("zero3", n_params=psi, world_size=n, dtype="bf16", opt_bytes=8, parts=parts,
                          activations=0, usable=None)
    assert mem.working_bytes == 2 * (parts.root + 2 * parts.per_layer) + (2 + 4) * parts.per_layer
    assert mem.total_bytes == round(16 * psi / n) + mem.working_bytes


# ----------------------------------------------------------------------------- activations


def test_activation_formula_by_hand() -> None:
    size = gpt_size("1.3B")
    b, s, h, v, layers = 8, 2048, 2048, 50304, 24
    sbh, sbv = s * b * h, s * b * v
    assert activation_bytes(size, b, "bf16", "zero3", checkpointing=False) == layers * 32 * sbh + 4 * sbh + 12 * sbv
    assert activation_bytes(size, b, "bf16", "ddp", checkpointing=False) == layers * 36 * sbh + 6 * sbh + 12 * sbv
    assert activation_bytes(size, b, "fp32", "ddp", checkpointing=False) == layers * 64 * sbh + 8 * sbh + 12 * sbv
    assert activation_bytes(size, b, "bf16", "zero3", checkpointing=True) == layers * 2 * sbh + 4 * sbh + 12 * sbv
    assert activation_bytes(size, b, "bf16", "zero3", checkpointing=False, dropout=0.1) == (
        layers * 34 * sbh + 4 * sbh + 12 * sbv
    )


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "checkpointing"), [(m, ac) for m in ("fp32", "autocast", "bf16-params")
                                                      for ac in (False, True)])
def test_activation_formula_against_torch_memtracker(mode: str, checkpointing: bool) -> None:
    """Peak live activation bytes of the trainer's GPT on CPU (one forward + backward of one
    micro batch, gradients pre-allocated as DDP/FSDP do) against the formula. "bf16-params" is what
    FSDP2's MixedPrecisionPolicy runs for zero2/zero3; "autocast" is ddp/zero1 in bf16."""
    import torch
    from torch.distributed._composable import checkpoint
    from torch.distributed._tools import mem_tracker

    from kubetrain_trainer.models import cross_entropy
    from kubetrain_trainer.models.gpt import GPT, GPTConfig

    # V/h = 16 as in real GPTs (25-65): the loss, not the CPU attention kernel's backward scratch
    # space, sets the checkpointed peak, so the numbers transfer to GPU kernels.
    sizes: dict[str, Any] = {"n_layers": 2, "n_heads": 2, "d_model": 128, "vocab_size": 2048, "seq_len": 128}
    b = 1
    torch.manual_seed(0)
    model = GPT(GPTConfig(**sizes))
    if mode == "bf16-params":
        model = model.to(torch.bfloat16)
    if checkpointing:
        for block in model.blocks:
            checkpoint(block)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    x = torch.randint(0, sizes["vocab_size"], (b, sizes["seq_len"]))
    tracker = mem_tracker.MemTracker()
    tracker.track_external(model)
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            loss = cross_entropy(model(x), x)
        loss.backward()
    peak = {str(k).rsplit(".", 1)[-1].lower(): v for dev in tracker.get_tracker_snapshot("peak").values()
            for k, v in dev.items()}
    measured = peak["act"] + peak["temp"]  # autocast's bf16 weight copies count as activations here

    size = GPTSize(**sizes)
    dtype, strategy = {"fp32": ("fp32", "ddp"), "autocast": ("bf16", "ddp"), "bf16-params": ("bf16", "zero3")}[mode]
    expected = activation_bytes(size, b, dtype, strategy, checkpointing=checkpointing)
    if mode == "autocast":
        expected += 2 * gpt_param_breakdown(size).flops_params  # the planner books these as working set
    if mode == "autocast" and checkpointing:
        # An upper bound: autocast's weight copies die before the loss backward; the planner keeps both.
        assert measured <= expected <= 1.2 * measured
    else:
        assert expected == pytest.approx(measured, rel=0.02)


# ------------------------------------------------------------------------------- GPU tables


@pytest.mark.parametrize(
    ("name", "dtype", "tflops", "label"),
    [
        ("NVIDIA H200", "bf16", 989.0, "H200"),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0, "H100"),
        ("nvidia h100 80gb hbm3", "fp8", 1979.0, "H100"),
        ("NVIDIA H100 PCIe", "bf16", 756.0, "H100 PCIe"),
        ("NVIDIA H100 NVL", "bf16", 835.5, "H100 NVL"),
        ("NVIDIA GH200 480GB", "bf16", 989.0, "GH200"),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0, "A100"),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5, "A100 40GB"),
        ("NVIDIA A10G", "bf16", 70.0, "A10G"),
        ("NVIDIA L40S", "fp8", 733.0, "L40S"),
        ("NVIDIA L4", "bf16", 121.0, "L4"),
        ("Tesla V100-SXM2-16GB", "fp16", 125.0, "V100"),
        ("Tesla T4", "fp16", 65.0, "T4"),
        ("H100", "fp32", 67.0, "H100"),
    ],
)
def test_peak_flops_matches_torch_device_names(name: str, dtype: str, tflops: float, label: str) -> None:
    assert peak_flops(name, dtype) == tflops * 1e12
    assert gpu_label(name) == label


def test_peak_flops_unknowns_and_missing_dtypes() -> None:
    assert peak_flops("cpu", "bf16") is None
    assert peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp8") is None  # no fp8 before Ada/Hopper
    assert peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 tensor cores
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.5e12


def test_gpu_memory() -> None:
    assert gpu_memory_bytes("NVIDIA H100 80GB HBM3") == int(79.1 * GIB)
    assert gpu_memory_bytes("NVIDIA H200") == int(139.8 * GIB)
    assert gpu_memory_bytes("NVIDIA A100-PCIE-40GB") == int(39.4 * GIB)
    assert gpu_memory_bytes("Tesla V100-SXM2-32GB") == int(31.7 * GIB)
    assert gpu_memory_bytes("cpu") is None


@pytest.mark.parametrize(("text", "value"), [("1.3B", 1_300_000_000), ("350M", 350_000_000), ("7.5e9", 7_500_000_000),
                                             ("1_000", 1000), ("10k", 10_000), ("2T", 2 * 10**12)])
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1.3X", "-5", "0"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_count(text)


# ------------------------------------------------------------------------- fit / suggestion


def _gpt(preset: str, **training: Any) -> dict[str, Any]:
    return {"workers": {"replicas": 1, "gpusPerWorker": 8}, "model": {"preset": preset},
            "precision": {"dtype": "bf16"}, "training": {"globalBatchSize": 64, **training}}


def test_fits_and_names_a_cheaper_strategy() -> None:
    spec = _spec(**_gpt("124M", microBatchSize=4), parallelism={"strategy": "zero3"})
    p = plan(spec, "H100")
    assert p.fits is True and p.world_size == 8 and p.accum_steps == 2
    assert p.suggestion.startswith("zero3 with microBatchSize 4 fits")
    assert "ddp also fits" in p.suggestion and "microBatchSize up to 8" in p.suggestion


def test_does_not_fit_suggests_strategy_and_micro_batch_that_do() -> None:
    spec = _spec(**_gpt("1.3B", microBatchSize=8), parallelism={"strategy": "ddp"})
    p = plan(spec, "L4")
    assert p.fits is False
    assert "ddp needs" in p.suggestion and "usable" in p.suggestion
    chosen, _, rest = p.suggestion.partition(" with microBatchSize ")
    micro = int(rest.split()[0])
    ac = "activationCheckpointing: true" in p.suggestion
    fixed = _spec(**_gpt("1.3B", microBatchSize=micro, activationCheckpointing=ac), parallelism={"strategy": chosen})
    assert plan(fixed, "L4").fits is True
    assert micro in micro_batch_options(64, 8)


def test_nothing_fits_says_so() -> None:
    spec = _spec(**{**_gpt("1.3B", microBatchSize=1), "workers": {"replicas": 1, "gpusPerWorker": 1}})
    p = plan(spec, "T4")
    assert p.fits is False and p.suggestion.startswith("does not fit")


def test_cpu_job_has_memory_but_no_fit_or_time() -> None:
    p = plan(_spec(model={"preset": "tiny"}, workers={"procsPerWorker": 2}))
    assert p.gpu is None and p.fits is None and p.step_time_s is None
    assert all(m.fits is None for m in p.memory) and p.world_size == 2


def test_step_time_at_the_assumed_mfu() -> None:
    spec = _spec(**_gpt("350M", microBatchSize=8), parallelism={"strategy": "zero2"})
    p = plan(spec, "H200", world_size=8, mfu=0.5)
    assert p.flops_per_step == p.flops_per_token * 64 * 1024  # type: ignore[operator]
    assert p.step_time_s == pytest.approx(p.flops_per_step / (8 * 989e12 * 0.5))  # type: ignore[operator]
    assert p.tokens_per_s == pytest.approx(64 * 1024 / p.step_time_s)  # type: ignore[operator]


def test_entrypoint_needs_params() -> None:
    spec = _spec(model={"entrypoint": "mypkg.models:build", "seqLen": 512}, workers={"gpusPerWorker": 8})
    blind = plan(spec, "H100")
    assert blind.n_params is None and blind.memory == () and "--params" in blind.suggestion
    sized = plan(spec, "H100", params=parse_count("1.3B"))
    assert sized.n_params == 1_300_000_000 and sized.memory[0].activations_bytes is None
    assert sized.flops_per_token == 6 * 1_300_000_000


def test_deepspeed_config_is_mapped() -> None:
    spec = _spec(workers={"replicas": 2, "gpusPerWorker": 8}, model={"preset": "350M"},
                 deepspeed={"train_batch_size": 128, "train_micro_batch_size_per_gpu": 4,
                            "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}})
    p = plan(spec, "A100")
    assert (p.strategy, p.dtype, p.global_batch, p.micro_batch, p.accum_steps) == ("zero3", "bf16", 128, 4, 2)


def test_unknown_gpu_and_uneven_batch() -> None:
    with pytest.raises(PlanError, match="unknown GPU"):
        plan(_spec(**_gpt("tiny")), "Z9000")
    p = plan(_spec(**_gpt("tiny")), "H100", world_size=6)  # an uneven split: ceil(G / 6) per rank at most
    assert (p.micro_batch, p.accum_steps) == (-(-p.global_batch // 6), 1)
    assert not any("smaller than" in n for n in p.notes)
    p = plan(_spec(**_gpt("tiny")), "H100", world_size=p.global_batch + 1)
    assert p.accum_steps is None and any("smaller than the world size" in n for n in p.notes)


# --------------------------------------------------------------------------------------- CLI


def _cli(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code or "import sys\nfrom kubetrain.cli import main\n"
                           "sys.exit(main(sys.argv[1:]))", "plan", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_json() -> None:
    result = subprocess.run([sys.executable, "-m", "kubetrain", "plan", str(EXAMPLE), "--json"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["n_params"] == HAND_COUNTS["1.3B"] and out["world_size"] == 32 and out["gpu"] == "H100"
    assert [m["strategy"] for m in out["memory"]] == ["ddp", "zero1", "zero2", "zero3"]
    assert out["fits"] is True and out["step_time_s"] > 0


def test_cli_text_and_options() -> None:
    result = _cli(str(EXAMPLE), "--gpu", "A100-40GB", "--world-size", "8", "--mfu", "0.5")
    assert result.returncode == 0, result.stderr
    assert "8 ranks on A100 40GB" in result.stdout and "MFU 50%" in result.stdout
    assert "verdict" in result.stdout and "zero3 *" in result.stdout


def test_cli_bad_file_exits_1_with_validate_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
                   "spec:\n  training: {maxStep: 3}\n")
    result = _cli(str(bad))
    assert result.returncode == 1
    assert "spec.training.maxStep: unknown field 'maxStep'; fix: did you mean 'maxSteps'?" in result.stderr


def test_cli_usage_errors_exit_2() -> None:
    assert _cli(str(EXAMPLE), "--gpu", "Z9000").returncode == 2
    assert _cli(str(EXAMPLE), "--params", "lots").returncode == 2
    assert _cli(str(EXAMPLE), "--mfu", "1.5").returncode == 2


def test_cli_works_with_torch_blocked() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'numpy', 'kopf', 'kubernetes'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kubetrain.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    result = _cli(str(EXAMPLE), "--json", code=code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_params"] == HAND_COUNTS["1.3B"]
