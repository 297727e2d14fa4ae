"""Will a job fit in this machine's memory? `kubetrain local` asks before it starts a process.

The planner (`kubetrain.tools.plan`) gives every rank's peak bytes (model states by strategy plus
activations at the job's micro batch); a local CPU run holds all ranks in this machine's RAM, plus
each process' own runtime (Python, torch and its libraries: 0.65 GiB resident measured after
`import torch, torch.distributed` on Linux, x86-64, torch 2.x; `RUNTIME_BYTES` takes 0.5 GiB so
that the estimate errs towards starting). A job that cannot fit is refused with these numbers
instead of being found by the OOM killer mid-run.
"""

from __future__ import annotations

from pathlib import Path

from kubetrain import api
from kubetrain.tools.plan import PlanError, plan

RUNTIME_BYTES = 512 << 20
GB = 1e9


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable of Linux (what can be allocated without swapping), or None elsewhere."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_fit_problem(spec: api.TrainingJobSpec, processes: int, available: int | None) -> str | None:
    """Why `processes` CPU ranks of `spec` cannot fit in `available` bytes (one line), or None
    when they fit or the size is unknown (an entrypoint model without a parameter count)."""
    if available is None or processes < 1:
        return None
    try:
        p = plan(spec, gpu="cpu", world_size=processes)
    except PlanError:
        return None  # validation already refused what the planner cannot plan
    memory = p.memory_of(p.strategy)
    if memory is None or memory.activations_bytes is None:
        return None
    per_rank = memory.total_bytes + RUNTIME_BYTES
    need = per_rank * processes
    if need <= available:
        return None
    parts = (f"params {memory.params_bytes / GB:.1f} + grads {memory.grads_bytes / GB:.1f} + optimizer "
             f"{memory.optimizer_bytes / GB:.1f} + working {memory.working_bytes / GB:.1f} + activations "
             f"{memory.activations_bytes / GB:.1f} + runtime {RUNTIME_BYTES / GB:.1f}")
    return (f"spec.model: {p.model} ({p.strategy}, {p.dtype}, micro batch {p.micro_batch}) needs about "
            f"{per_rank / GB:.1f} GB per process ({parts} GB; see `kubetrain plan`) x {processes} process(es) "
            f"= {need / GB:.1f} GB, but this machine has {available / GB:.1f} GB available; fix: a smaller "
            "model, a smaller training.microBatchSize, training.activationCheckpointing: true, or fewer "
            "processes")
