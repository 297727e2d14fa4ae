"""fp8 training for nn.Linear layers: torchao's Float8 training when importable, else a small
tensorwise-scaled fallback on ``torch._scaled_mm`` (e4m3 forward, e5m2 gradients).

Only GPUs with compute capability >= 8.9 (Ada, Hopper, Blackwell) have fp8 tensor cores; elsewhere
``check_supported`` raises a SpecError naming what is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpecError

_E4M3 = torch.float8_e4m3fn
_E5M2 = torch.float8_e5m2


def check_supported(device: torch.device) -> None:
    need = "precision.dtype fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper/Blackwell)"
    if device.type != "cuda":
        raise SpecError(f"{need}; this worker runs on {device.type}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise SpecError(f"{need}; {name} has compute capability {major}.{minor}")


def _quantize(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensorwise scaling: returns (fp8 tensor, inverse scale) so that t ≈ q.float() * inv_scale."""
    fmax = torch.finfo(dtype).max
    amax = t.detach().abs().amax().float().clamp(min=1e-12)
    scale = fmax / amax
    q = (t.float() * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def _col_major(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous().t()


class _Fp8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xq, xs = _quantize(x, _E4M3)
        wq, ws = _quantize(w, _E4M3)
        ctx.save_for_backward(xq, xs, wq, ws)
        ctx.w_dtype = w.dtype
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xq, xs, wq, ws = ctx.saved_tensors
        gq, gs = _quantize(grad, _E5M2)
        gx = torch._scaled_mm(gq, _col_major(wq), scale_a=gs, scale_b=ws, out_dtype=torch.bfloat16)
        gw = torch._scaled_mm(gq.t().contiguous(), _col_major(xq), scale_a=gs, scale_b=xs, out_dtype=torch.float32)
        return gx, gw.to(ctx.w_dtype)


class Float8Linear(nn.Linear):
    """nn.Linear whose matmuls run in fp8 (bias added in bf16). Same parameters and state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _Fp8Matmul.apply(x.reshape(-1, shape[-1]), self.weight)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


def _eligible(m: nn.Module, fqn: str) -> bool:
    # The output head stays in bf16 (standard practice); fp8 GEMMs need dims divisible by 16.
    return (
        isinstance(m, nn.Linear)
        and not fqn.endswith("head")
        and m.in_features % 16 == 0
        and m.out_features % 16 == 0
    )


def convert(model: nn.Module) -> str:
    """Swap eligible Linear layers to fp8 in place; returns which implementation was used."""
    try:
        ao = importlib.import_module("torchao.float8")
    except ImportError:
        ao = None
    if ao is not None:
        ao.convert_to_float8_training(model, module_filter_fn=_eligible)
        return "torchao"
    for fqn, m in list(model.named_modules()):
        if _eligible(m, fqn) and type(m) is nn.Linear:
            m.__class__ = Float8Linear
    return "scaled_mm"


def reference_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """bf16 reference for tests."""
    return F.linear(x.to(torch.bfloat16), w.to(torch.bfloat16))
