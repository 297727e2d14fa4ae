"""Tensor parallelism in `kubetrain plan`: what one rank of a `(dp, tp)` mesh holds and sends.

The trainer's plan (kubetrain_trainer.tensor_parallel) splits every matrix of the built-in GPT over
the tp ranks (q, k, v, the MLP's fc by output columns; the projections by input rows; embeddings
and the head by vocabulary / position rows) and replicates only the LayerNorms. So a rank holds
`(Ψ - Ψ_norms) / tp + Ψ_norms` parameters, and the data-parallel strategy then shards (zero2/3)
or replicates (ddp) those over the dp = world / tp ranks.

Activations of one micro batch (`_activation_constants`: r residual bytes, c compute bytes), per
layer `2r + 14c` on one rank become `2r/tp + 2c + 12c/tp` with sequence parallelism (the norms'
inputs are sequence shards; the attention and MLP inputs are all-gathered in full, the rest is
split by heads or MLP columns) and `2r + 2c + 12c/tp` without; the loss' logits are split by
vocabulary (`12·sbV/tp`).

Collectives: 2 per layer forward (all-reduce; with sequence parallelism an all-gather before and a
reduce-scatter after attention and MLP) and 2 backward, each over `s·b·h·c` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrain.api.modelsize import GPTSize, ParamBreakdown, gpt_param_breakdown

MIXED = frozenset({"bf16", "fp16", "fp8"})
LOSS_BYTES_PER_LOGIT = 12  # as plan.LOSS_BYTES_PER_LOGIT
COLLECTIVES_PER_LAYER = 4  # 2 forward + 2 backward (all-reduce, or all-gather + reduce-scatter pairs)


def split_breakdown(size: GPTSize, tp: int) -> ParamBreakdown:
    """Parameters one tp rank holds, by part (norms replicated, everything else / tp)."""
    full = gpt_param_breakdown(size)
    if tp == 1:
        return full
    norms = 2 * (2 * size.d_model)  # ln1 and ln2: weight + bias
    return ParamBreakdown(
        token_embedding=full.token_embedding // tp,
        position_embedding=full.position_embedding // tp,
        per_layer=(full.per_layer - norms) // tp + norms,
        n_layers=full.n_layers,
        final_norm=full.final_norm,
        head=full.head // tp,
    )


def _bytes(dtype: str, strategy: str) -> tuple[int, int]:
    """(residual-stream bytes r, compute bytes c): autocast keeps the residual stream fp32."""
    if dtype not in MIXED:
        return 4, 4
    return (2, 2) if strategy in ("zero2", "zero3") else (4, 2)


def activation_bytes(size: GPTSize, micro_batch: int, dtype: str, strategy: str, *, checkpointing: bool,
                     dropout: float, tp: int, sequence_parallel: bool) -> int:
    """Peak activation bytes of one micro batch on one tp rank (see the module docstring)."""
    r, c = _bytes(dtype, strategy)
    seq = tp if sequence_parallel else 1  # the factor of the sequence-sharded (norm) regions
    layer = 2 * r / seq + 2 * c + 12 * c / tp
    if dropout > 0:
        layer += 2 / seq  # the two residual dropouts' bool masks
    sbh = micro_batch * size.seq_len * size.d_model
    final = r / seq + c  # final norm's input, the head's (all-gathered) input
    loss = LOSS_BYTES_PER_LOGIT * micro_batch * size.seq_len * size.vocab_size / tp
    if not checkpointing:
        return round(size.n_layers * layer * sbh + final * sbh + loss)
    block_input = r / seq
    recompute = layer + 2 * c / tp  # one block recomputed plus its backward temporaries
    return round(size.n_layers * block_input * sbh + final * sbh + max(loss, recompute * sbh))


@dataclass(frozen=True)
class TPCollectives:
    per_layer: int  # collectives per layer per micro batch (forward + backward)
    bytes_per_step: int  # bytes each rank sends per optimizer step (ring algorithms)
    kind: str


def collectives(size: GPTSize, micro_batch: int, accum_steps: int, dtype: str, tp: int,
                sequence_parallel: bool) -> TPCollectives:
    """The extra communication of TP. A ring all-reduce of n bytes sends 2n(tp-1)/tp per rank; an
    all-gather or reduce-scatter n(tp-1)/tp, so a pair of them equals one all-reduce."""
    c = 2 if dtype in MIXED else 4
    n = micro_batch * size.seq_len * size.d_model * c
    per_collective = 2 * n * (tp - 1) / tp
    # + the embedding's and the head input's collective (forward and backward)
    count = COLLECTIVES_PER_LAYER * size.n_layers + 4
    kind = "all-gather + reduce-scatter pairs" if sequence_parallel else "all-reduces"
    return TPCollectives(COLLECTIVES_PER_LAYER, round(count * per_collective * accum_steps), kind)


def tp_options(size: GPTSize | None, procs_per_worker: int, current: int) -> list[int]:
    """Tensor-parallel degrees above `current` the trainer accepts: divisors of procsPerWorker,
    nHeads and vocabSize."""
    out = []
    for tp in range(current + 1, procs_per_worker + 1):
        if procs_per_worker % tp:
            continue
        if size is not None and (size.n_heads % tp or size.vocab_size % tp):
            continue
        out.append(tp)
    return out
