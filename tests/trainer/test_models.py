"""The built-in GPT, presets, entrypoints and the fp8 fallback (single process)."""

from __future__ import annotations

import pytest
import torch

from kubetrain.api import ModelSpec
from kubetrain.api.modelsize import PRESETS
from kubetrain_trainer import fp8
from kubetrain_trainer.errors import ModelError, SpecError
from kubetrain_trainer.models import GPT, build_model

pytestmark = pytest.mark.trainer


def test_gpt_forward_tied_and_causal() -> None:
    torch.manual_seed(0)
    built = build_model(ModelSpec())
    m = built.module
    assert isinstance(m, GPT)
    assert m.head.weight is m.tok_emb.weight  # tied
    x = torch.randint(0, 256, (2, 16))
    y = m(x)
    assert y.shape == (2, 16, 256)
    x2 = x.clone()
    x2[:, 10:] = 0
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])  # causal: the future does not leak
    untied = build_model(ModelSpec(tie_embeddings=False))
    assert untied.n_params > built.n_params
    assert len(built.blocks) == 2 and built.flops_per_token and built.flops_per_token > 6 * 0.1e6


@pytest.mark.parametrize(("preset", "millions"), [("124M", 124), ("350M", 355), ("1.3B", 1314)])
def test_preset_sizes(preset: str, millions: int) -> None:
    s = PRESETS[preset]
    d, layers, v, t = s["d_model"], s["n_layers"], s["vocab_size"], s["seq_len"]
    # parameters as built (tied): embeddings + positions + 12 d^2 per block (no biases) + norms
    n = v * d + t * d + layers * (12 * d * d + 4 * d) + 2 * d
    assert abs(n / 1e6 - millions) / millions < 0.03


def test_entrypoint_model_and_errors() -> None:
    built = build_model(ModelSpec(entrypoint="tests.trainer.entry_models:tiny_lm", entrypoint_args={"d": 16}))
    assert len(built.blocks) == 2 and built.flops_per_token is None
    assert built.module(torch.randint(0, 256, (1, 4))).shape == (1, 4, 256)
    cases = {
        "no_such_pkg.mod:fn": "cannot import module 'no_such_pkg.mod'",
        "tests.trainer.entry_models:missing": "has no attribute 'missing'",
        "tests.trainer.entry_models:not_a_module": "must return an nn.Module",
        "tests.trainer.entry_models:raises": "boom from the user's model code",
    }
    for entry, needle in cases.items():
        with pytest.raises(ModelError, match=r"model\.entrypoint") as err:
            build_model(ModelSpec(entrypoint=entry))
        assert needle in str(err.value) and err.value.exit_code == 65
    with pytest.raises(ModelError, match="entrypointArgs"):
        build_model(ModelSpec(entrypoint="tests.trainer.entry_models:tiny_lm", entrypoint_args={"bogus": 1}))


def test_fp8_requires_a_capable_gpu() -> None:
    with pytest.raises(SpecError, match=r"precision.dtype fp8 needs a CUDA GPU with compute capability >= 8.9"):
        fp8.check_supported(torch.device("cpu"))


def test_fp8_fallback_matmul_matches_bf16() -> None:
    """The torch._scaled_mm fallback (runs on CPU too) against a bf16 reference, forward and backward."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False)
    ref = torch.nn.Linear(64, 32, bias=False)
    ref.load_state_dict(lin.state_dict())
    lin.__class__ = fp8.Float8Linear
    x = torch.randn(16, 64, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    y = lin(x)
    yr = ref(xr)
    assert y.dtype == torch.bfloat16
    rel = ((y.float() - yr).norm() / yr.norm()).item()
    assert rel < 0.08
    g = torch.randn_like(yr)
    y.float().backward(g)
    yr.backward(g)
    assert lin.weight.grad is not None and ref.weight.grad is not None and x.grad is not None
    assert ((lin.weight.grad - ref.weight.grad).norm() / ref.weight.grad.norm()).item() < 0.15
    assert xr.grad is not None
    assert ((x.grad - xr.grad).norm() / xr.grad.norm()).item() < 0.15


def test_fp8_training_path_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole fp8 path (Linear swap + bf16 autocast + scaled_mm) on CPU, with the GPU check
    bypassed: a 1-process ddp run needs no process group."""
    from kubetrain_trainer import config, engine
    from kubetrain_trainer.distributed import DistContext

    monkeypatch.setattr(fp8, "check_supported", lambda device: None)
    ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo")
    spec = {"training": {"maxSteps": 12, "globalBatchSize": 8}, "optimizer": {"lr": 3e-3}}
    losses = {}
    for dtype in ("bf16", "fp8"):
        trainer = engine.Trainer(config.from_spec({**spec, "precision": {"dtype": dtype}}), ctx, None)
        try:
            losses[dtype] = [h["loss"] for h in trainer.fit().history]
        finally:
            trainer.close()
        if dtype == "fp8":
            assert trainer.fp8_impl in ("torchao", "scaled_mm")
            gpt = trainer.built.module
            assert isinstance(gpt, GPT)
            fc = gpt.blocks[0].mlp.fc  # type: ignore[union-attr]
            assert isinstance(fc, fp8.Float8Linear) or trainer.fp8_impl == "torchao"
    assert losses["fp8"][-1] < losses["fp8"][0] - 0.5
    assert losses["fp8"] == pytest.approx(losses["bf16"], rel=2e-2)
