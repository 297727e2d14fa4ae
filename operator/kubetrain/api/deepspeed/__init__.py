"""`spec.deepspeed`: a DeepSpeed JSON config, taken as-is and meaning what DeepSpeed means.

The DeepSpeed keys are mapped onto the typed fields with DeepSpeed's names, semantics and
defaults (checked against deepspeed/runtime/config.py, precision_config.py, zero/config.py
and engine.py of DeepSpeed 0.19.6):

================================  ==========================================================
DeepSpeed key                     typed field
================================  ==========================================================
train_batch_size                  training.globalBatchSize
train_micro_batch_size_per_gpu    training.microBatchSize
gradient_accumulation_steps       (derived: globalBatchSize / (microBatchSize x world size))
gradient_clipping                 training.gradientClipping (DeepSpeed >= 0.19.3 defaults to
                                  1.0, earlier versions to 0.0 = off; Kubetrain: 1.0)
optimizer.type / .params          optimizer.* ("Adam" is AdamW unless params.adam_w_mode is
                                  false; "AdamW" is always AdamW; "SGD" is torch.optim.SGD)
scheduler.type / .params          lrSchedule.* (DeepSpeed's five + torch's ReduceLROnPlateau)
fp16.*                            precision.dtype fp16 + the loss-scale fields
bf16.enabled (legacy "bfloat16")  precision.dtype bf16
zero_optimization.stage 0..3      parallelism.strategy ddp / zero1 / zero2 / zero3
================================  ==========================================================

Resolution of each typed field: the value written in the typed field, else the DeepSpeed
key, else the default -- DeepSpeed's default inside a section the DeepSpeed config has
(e.g. an `optimizer` section without `lr` means FusedAdam's lr 1e-3), Kubetrain's otherwise
(globalBatchSize 8, AdamW lr 3e-4 betas [0.9, 0.999] eps 1e-8 weightDecay 0.01 (0 for
SGD), gradientClipping 1.0, fp32, ddp, Constant). A typed field and a DeepSpeed key both
given with different values is an error naming both. "auto" (the Hugging Face Trainer
placeholder) counts as not given.

Keys fall in four groups: mapped (above); no-op (accepted, listed in `NO_OP_KEYS`:
logging, profiling and performance knobs that never change what is computed, some only
at their default value); rejected (what DeepSpeed itself rejects, by name); and
unsupported -- everything else, accepted but ignored and always listed by
`unsupported_keys`, in `kubetrain validate`'s notes and in the operator's condition
message (`deepspeed_notes`).

Batch sizes follow DeepSpeed's `_set_batch_related_parameters` / `_batch_assertion`:
train = micro x accumulation x world size; any two given derive the third, all three must
agree, train alone means no accumulation, micro alone means train = micro x world size.
The world size is the one passed to `resolve`, else the job's nominal size
(workers.replicas x procsPerWorker). What is fixed there -- the global batch and the
micro batch -- stays fixed when an elastic job runs at another size; the accumulation is
re-derived. Any world size up to globalBatchSize works: the trainer splits an uneven global
batch exactly (ranks take G // W or G // W + 1 samples, each micro-batch's loss weighted by
its samples), so the only divisibility rule kept is DeepSpeed's own on an explicit triple.
"""
from kubetrain.api.deepspeed.context import DeepSpeedConfigError, Resolution
from kubetrain.api.deepspeed.features import Monitor, gather_16bit_weights_on_model_save, monitors
from kubetrain.api.deepspeed.keys import KUBETRAIN_DEFAULTS, MAPPED_KEYS, NO_OP_KEYS
from kubetrain.api.deepspeed.mapping import (
    analyse,
    deepspeed_notes,
    deepspeed_problems,
    explain_object,
    note_provider,
    resolve,
    valid_world_sizes,
)
from kubetrain.api.deepspeed.unsupported import unsupported_keys

__all__ = [
    "KUBETRAIN_DEFAULTS",
    "MAPPED_KEYS",
    "NO_OP_KEYS",
    "DeepSpeedConfigError",
    "Monitor",
    "Resolution",
    "analyse",
    "deepspeed_notes",
    "deepspeed_problems",
    "explain_object",
    "gather_16bit_weights_on_model_save",
    "monitors",
    "note_provider",
    "resolve",
    "unsupported_keys",
    "valid_world_sizes",
]
