"""Sizes of the built-in GPT and of the GPUs it runs on: pure Python, the single source of truth.

`kubetrain plan` (no torch) and the trainer (`kubetrain_trainer`) both read these tables, so the
planner's numbers describe exactly the module the trainer builds and the MFU it reports.

The built-in GPT (`kubetrain_trainer.models.gpt`) is GPT-2 shaped: learned token and position
embeddings, pre-norm blocks of LayerNorm (weight + bias) -> causal self-attention (qkv and output
projections, no biases) and LayerNorm -> MLP of width 4·d (no biases, tanh-GELU), a final
LayerNorm, and an output head without bias that is the token embedding when tied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetrain.api.models import ModelSpec

# name -> sizes; the same keys as TrainingJob spec.model (snake_case). The trainer's PRESETS.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 2, "n_heads": 2, "d_model": 64, "vocab_size": 256, "seq_len": 64},
    "124M": {"n_layers": 12, "n_heads": 12, "d_model": 768, "vocab_size": 50304, "seq_len": 1024},
    "350M": {"n_layers": 24, "n_heads": 16, "d_model": 1024, "vocab_size": 50304, "seq_len": 1024},
    "1.3B": {"n_layers": 24, "n_heads": 16, "d_model": 2048, "vocab_size": 50304, "seq_len": 2048},
}
DEFAULT_PRESET = "tiny"  # what a spec without preset, sizes or entrypoint trains

MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * d_model


@dataclass(frozen=True)
class GPTSize:
    n_layers: int
    n_heads: int
    d_model: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def gpt_size(preset: str | None = None, *, tie_embeddings: bool = True, **sizes: int | None) -> GPTSize:
    """A preset (default tiny) with explicit sizes overriding it, as the trainer resolves spec.model."""
    base = dict(PRESETS[preset or DEFAULT_PRESET])
    base.update({k: v for k, v in sizes.items() if v is not None})
    unknown = set(base) - set(PRESETS[DEFAULT_PRESET])
    if unknown:
        raise TypeError(f"unknown GPT size(s): {', '.join(sorted(unknown))}")
    return GPTSize(tie_embeddings=tie_embeddings, **base)


def model_shape(model: ModelSpec) -> GPTSize:
    """`spec.model`'s sizes: its preset (default tiny) with the explicit sizes overriding it. For an
    entrypoint model only seqLen and vocabSize mean something (the data's sample length and the
    synthetic corpus' vocabulary); the GPT sizes are the default preset's."""
    return gpt_size(
        model.preset, tie_embeddings=model.tie_embeddings, n_layers=model.n_layers, n_heads=model.n_heads,
        d_model=model.d_model, vocab_size=model.vocab_size, seq_len=model.seq_len,
    )


@dataclass(frozen=True)
class ParamBreakdown:
    """Parameter counts of the built-in GPT by part (a tied head adds nothing)."""

    token_embedding: int
    position_embedding: int
    per_layer: int
    n_layers: int
    final_norm: int
    head: int

    @property
    def layers(self) -> int:
        return self.per_layer * self.n_layers

    @property
    def total(self) -> int:
        return self.token_embedding + self.position_embedding + self.layers + self.final_norm + self.head

    @property
    def root(self) -> int:
        """Parameters outside the blocks (the FSDP root unit: embeddings, final norm, head)."""
        return self.total - self.layers

    @property
    def flops_params(self) -> int:
        """N of the 6N rule: the parameters that multiply activations. Lookups cost no FLOPs, so the
        position embedding is excluded, and so is an untied token embedding (its head is counted)."""
        lookup = self.position_embedding + (self.token_embedding if self.head else 0)
        return self.total - lookup


def gpt_param_breakdown(size: GPTSize) -> ParamBreakdown:
    d, v = size.d_model, size.vocab_size
    attention = 3 * d * d + d * d  # qkv + output projection, no biases
    mlp = 2 * MLP_RATIO * d * d  # fc + projection, no biases
    norms = 2 * (2 * d)  # ln1, ln2: weight + bias
    return ParamBreakdown(
        token_embedding=v * d,
        position_embedding=size.seq_len * d,
        per_layer=attention + mlp + norms,
        n_layers=size.n_layers,
        final_norm=2 * d,
        head=0 if size.tie_embeddings else v * d,
    )


def gpt_param_count(
    n_layers: int, n_heads: int, d_model: int, vocab_size: int, seq_len: int, tie_embeddings: bool = True
) -> int:
    """Exactly ``sum(p.numel() for p in GPT(cfg).parameters())`` of the trainer's GPT
    (= V·d + T·d + L·(12·d² + 4·d) + 2·d, plus V·d for an untied head). n_heads does not change it."""
    del n_heads  # heads split d_model; they add no parameters
    size = GPTSize(n_layers, 1, d_model, vocab_size, seq_len, tie_embeddings)
    return gpt_param_breakdown(size).total


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·d·T (PaLM, appendix B; nanoGPT's estimate_mfu).

    N counts the parameters that multiply activations (`ParamBreakdown.flops_params`: all but the
    position embedding, and an untied token embedding); 6 = 2 forward + 4 backward FLOPs per
    multiply-add. 12·L·d·T is attention's QKᵀ and AV over the full context T (causal masking is
    not subtracted, by the convention). Activation recomputation is not counted: this is *model*
    FLOPs, the numerator of MFU."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def gpt_flops_per_token(size: GPTSize) -> float:
    return flops_per_token(gpt_param_breakdown(size).flops_params, size.n_layers, size.d_model, size.seq_len)


# ------------------------------------------------------------------------------------------- GPUs

# Dense (no sparsity) peak TFLOP/s per GPU by compute dtype, from NVIDIA's datasheets (SXM parts
# unless named). "fp32" is the CUDA-core rate PyTorch gets by default; "tf32" is the tensor-core
# rate, reached only with torch.backends.cuda.matmul.allow_tf32 = True. A dtype that is missing
# has no tensor-core support on that GPU (bf16 before Ampere, fp8 before Ada/Hopper).
# Keys are matched against torch.cuda.get_device_name() in this order, most specific first
# (every space-separated word of the key must occur; see find_gpu).
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "GB200": {"fp32": 80.0, "tf32": 1250.0, "bf16": 2500.0, "fp16": 2500.0, "fp8": 5000.0},
    "B200": {"fp32": 75.0, "tf32": 1125.0, "bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0},
    "GH200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0, "fp16": 989.0, "fp8": 1979.0},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "fp8": 1670.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0, "fp16": 989.0, "fp8": 1979.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "fp8": 1670.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0, "fp16": 989.0, "fp8": 1979.0},
    "H800": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0, "fp16": 989.0, "fp8": 1979.0},
    "H20": {"fp32": 44.0, "tf32": 74.0, "bf16": 148.0, "fp16": 148.0, "fp8": 296.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "A800": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "A10G": {"fp32": 31.2, "tf32": 35.0, "bf16": 70.0, "fp16": 70.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0, "fp8": 733.0},
    "L40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0, "fp8": 362.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.5},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3},
    "V100": {"fp32": 15.7, "fp16": 125.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
}

# GPU memory in GiB as CUDA reports it (total capacity, a little under the marketed GB), matched
# like GPU_PEAK_TFLOPS. A bare "A100" means the 80 GB part.
GPU_MEMORY_GIB: dict[str, float] = {
    "GB200": 184.0,
    "B200": 178.4,
    "GH200 144G": 139.8,
    "GH200": 94.5,
    "H200": 139.8,
    "H100 NVL": 93.1,
    "H100": 79.1,
    "H800": 79.1,
    "H20": 94.9,
    "A100 40GB": 39.4,
    "A100": 79.2,
    "A800 40GB": 39.4,
    "A800": 79.2,
    "A10G": 22.0,
    "A10": 22.0,
    "L40S": 44.4,
    "L40": 44.4,
    "L4": 22.0,
    "RTX 4090": 23.6,
    "V100 32GB": 31.7,
    "V100": 15.8,
    "T4": 14.7,
}

CPU_NAMES = frozenset({"", "cpu", "none"})


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def find_gpu(table_keys: list[str] | tuple[str, ...], gpu_name: str) -> str | None:
    """The first key all of whose words occur in `gpu_name`, ignoring case, spaces and punctuation:
    "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-SXM4-40GB" -> "A100 40GB"."""
    name = _squash(gpu_name)
    if name in CPU_NAMES:
        return None
    for key in table_keys:
        if all(_squash(word) in name for word in key.split()):
            return key
    return None


def peak_flops(gpu_name: str, dtype: str, *, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of one GPU for a compute dtype (fp32 | tf32 | bf16 | fp16 | fp8); None for
    a CPU, an unknown GPU, or a dtype the GPU has no tensor cores for. With tf32=True, fp32 means
    tf32 (when the trainer enables TF32 matmuls)."""
    key = find_gpu(tuple(GPU_PEAK_TFLOPS), gpu_name)
    if key is None:
        return None
    dtype = "tf32" if dtype == "fp32" and tf32 else dtype
    value = GPU_PEAK_TFLOPS[key].get(dtype)
    return value * 1e12 if value is not None else None


def gpu_memory_bytes(gpu_name: str) -> int | None:
    key = find_gpu(tuple(GPU_MEMORY_GIB), gpu_name)
    return int(GPU_MEMORY_GIB[key] * 2**30) if key is not None else None


def gpu_label(gpu_name: str) -> str | None:
    """The tables' name for a GPU ("H100 PCIe", "A100 40GB"), or None when unknown."""
    peak = find_gpu(tuple(GPU_PEAK_TFLOPS), gpu_name)
    memory = find_gpu(tuple(GPU_MEMORY_GIB), gpu_name)
    if peak is not None and memory is not None and memory.startswith(peak):
        return memory  # the memory table tells the variants apart (A100 40GB / 80GB)
    return peak


# ------------------------------------------------------------------------------------ counts

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """'1.3B', '350M', '7.5e9', '1_300_000_000', '10k' -> an integer count."""
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not m:
        raise ValueError(f"not a count: {text!r} (examples: 1.3B, 350M, 7.5e9)")
    value = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).upper()]
    if value < 1:
        raise ValueError(f"not a positive count: {text!r}")
    return round(value)


def format_count(n: float) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"
