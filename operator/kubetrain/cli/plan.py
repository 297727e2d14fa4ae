"""`kubetrain plan FILE [--gpu H100] [--world-size N] [--params N] [--mfu 0.4] [--json]`:
parameters, per-rank memory of ddp/zero1/zero2/zero3, FLOPs, step time at an assumed MFU, and
the cheapest strategy and largest micro batch that fit. Offline and without torch.

Exit codes: 0 planned (whether or not it fits; read `fits`), 1 invalid file or spec, 2 bad
arguments (e.g. an unknown GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from kubetrain import api
from kubetrain.api.modelsize import format_count, parse_count
from kubetrain.api.specfile import SpecFileError, load_one
from kubetrain.api.validate import validate_object
from kubetrain.tools.plan import DEFAULT_HEADROOM, DEFAULT_MFU, GIB, Plan, PlanError, StrategyMemory, plan


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(low: float, high: float) -> argparse._ActionType:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be in ({low}, {high}], got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a TrainingJob YAML/JSON file ('-' = stdin)")
    parser.add_argument("--gpu", help="GPU model, e.g. H100, H200, A100, A100-40GB, L4, or cpu "
                        "(default: H100 when gpusPerWorker > 0, else cpu)")
    parser.add_argument("--world-size", type=_positive, metavar="N",
                        help="training processes (default: replicas x procsPerWorker)")
    parser.add_argument("--params", type=_count, metavar="N",
                        help="parameter count, e.g. 1.3B or 350M (required for an entrypoint model)")
    parser.add_argument("--mfu", type=_fraction(0.0, 1.0), default=DEFAULT_MFU,
                        help=f"assumed model FLOPs utilisation for the step time (default {DEFAULT_MFU})")
    parser.add_argument("--headroom", type=_fraction(-1e-9, 0.9), default=DEFAULT_HEADROOM,
                        help="fraction of GPU memory kept free for the CUDA context, NCCL and "
                        f"fragmentation (default {DEFAULT_HEADROOM})")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (bytes, FLOPs, seconds)")


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(ImportError):
        import kubetrain.api.deepspeed  # noqa: F401  (registers the DeepSpeed checks with validate)
    try:
        doc = load_one(args.file)
    except SpecFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = validate_object(doc)
    if problems:
        for p in problems:
            print(f"{args.file}: {p}", file=sys.stderr)
        return 1
    job = api.TrainingJob.model_validate(doc)
    try:
        result = plan(job.spec, args.gpu, args.world_size, params=args.params, mfu=args.mfu,
                      headroom=args.headroom, name=str(job.metadata.get("name", "")))
    except PlanError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2 if "unknown GPU" in str(exc) else 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return 0


# ---------------------------------------------------------------------------------- text


def _g(n: float | None, unit: int = GIB) -> str:
    return "-" if n is None else f"{n / unit:.2f}"


def _unit(p: Plan) -> tuple[str, int]:
    """GiB, or MiB for small (CPU-sized) jobs so the table does not read 0.00."""
    return ("GiB", GIB) if max((m.total_bytes for m in p.memory), default=0) >= GIB else ("MiB", 2**20)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


def _flops(n: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} FLOP"


def _row(m: StrategyMemory, chosen: str, unit: int) -> str:
    mark = "*" if m.strategy == chosen else " "
    fits = "-" if m.fits is None else ("yes" if m.fits else "NO")
    cells = [m.params_bytes, m.grads_bytes, m.optimizer_bytes, m.working_bytes, m.activations_bytes,
             m.total_bytes, m.paper_bytes]
    return f"  {m.strategy:<6}{mark}" + "".join(f"{_g(c, unit):>9}" for c in cells) + f"{fits:>6}"


def _header(p: Plan) -> list[str]:
    lines = [f"{p.name or 'TrainingJob'}: {p.model}"]
    if p.n_params:
        lines.append(f"  parameters   {p.n_params:,} ({format_count(p.n_params)}, {p.params_source})")
    if p.flops_per_token:
        formula = "6N + 12·L·d·T" if p.gpt else "6N"
        lines.append(f"  FLOPs/token  {_flops(p.flops_per_token)} ({formula})")
    where = "CPU" if p.gpu is None else f"{p.gpu} ({(p.gpu_memory_bytes or 0) / GIB:.1f} GiB, " \
        f"{(p.usable_bytes or 0) / GIB:.1f} usable"
    if p.gpu is not None:
        where += f"; {p.peak_flops / 1e12:g} TFLOP/s {p.dtype})" if p.peak_flops else ")"
    lines.append(f"  world        {p.world_size} ranks on {where}")
    dp = p.data_parallel or p.world_size
    if p.tensor_parallel > 1:
        sp = "on" if p.sequence_parallel else "off"
        lines.append(f"  mesh         data-parallel {dp} x tensor-parallel {p.tensor_parallel} (sequence parallel {sp}); "
                     "memory below is per rank of this mesh")
        if p.tp_collectives:
            c = p.tp_collectives
            lines.append(f"  TP traffic   {c.per_layer} {c.kind} per layer per micro batch; "
                         f"{c.bytes_per_step / GIB:.3g} GiB sent per rank per step")
    if p.pipeline is not None:
        pl = p.pipeline
        per = f", {pl.stages_per_rank} stages per rank" if pl.stages_per_rank > 1 else ""
        lines.append(f"  pipeline     {pl.pipeline_parallel} ranks x data-parallel {dp} x tensor-parallel "
                     f"{p.tensor_parallel}; {pl.schedule}{per}, {pl.micro_batches} micro-batches per step: "
                     f"bubble {pl.bubble:.1%} of a step (in theory)")
    accum = f" x accum {p.accum_steps}" if p.accum_steps else ""
    lines.append(f"  batch        global {p.global_batch} = {dp} data-parallel ranks x micro {p.micro_batch}{accum}; "
                 f"{p.global_batch * p.seq_len:,} tokens per step")
    master = " (fp32 master weights)" if p.dtype != "fp32" else ""
    ac = "on" if p.activation_checkpointing else "off"
    lines.append(f"  training     {p.strategy}, {p.dtype}{master}, {p.optimizer}, activation checkpointing {ac}")
    return lines


def _memory(p: Plan) -> list[str]:
    if not p.memory:
        return []
    head = "".join(f"{h:>9}" for h in ("params", "grads", "optim", "working", "activ.", "total", "paper"))
    name, unit = _unit(p)
    lines = ["", f"  {name + '/rank':<7}{head}{'fits':>6}"]
    lines += [_row(m, p.strategy, unit) for m in p.memory]
    lines.append("  (params/grads/optim: fp32 states kept on the rank; working: bf16 copies, gathered parameters, "
                 "gradients in flight; paper: the ZeRO paper's model states, no activations)")
    if p.activations:
        a = p.activations
        lines.append(f"  activations of micro batch {a.micro_batch}: {_g(a.without_checkpointing_bytes, unit)} {name} "
                     f"without checkpointing, {_g(a.with_checkpointing_bytes, unit)} {name} with")
    return lines


def _stages(p: Plan) -> list[str]:
    if p.pipeline is None:
        return []
    name, unit = _unit(p)
    lines = ["", f"  {'stage':<7}{'rank':>5}{'blocks':>10}{'params':>12}  holds"]
    for s in p.pipeline.stages:
        holds = ", ".join(x for x, on in (("embeddings", s.embeddings), ("final norm + head", s.head)) if on)
        lines.append(f"  {s.stage:<7}{s.rank:>5}{f'{s.first_block}-{s.last_block}':>10}{format_count(s.params):>12}"
                     f"  {holds}")
    lines.append(f"  {'pp rank':<7}{'states':>9}{'activ.':>9}{'total':>9}  ({name}/rank, {p.strategy}; "
                 "activations of the micro-batches in flight at the peak)")
    for r in p.pipeline.ranks:
        act = "-" if r.activations_bytes is None else _g(r.activations_bytes, unit)
        lines.append(f"  {r.rank:<7}{_g(r.states_bytes, unit):>9}{act:>9}{_g(r.total_bytes, unit):>9}"
                     f"  stages {', '.join(map(str, r.stages))}, {r.in_flight} in flight")
    return lines


def render(p: Plan) -> str:
    lines = _header(p) + _memory(p) + _stages(p) + [""]
    if p.flops_per_step and p.step_time_s and p.tokens_per_s and p.run_time_s:
        lines.append(f"  step         {_flops(p.flops_per_step)} -> {p.step_time_s:.3g} s at MFU {p.mfu:.0%} = "
                     f"{format_count(p.tokens_per_s)} tokens/s; {p.max_steps} steps = {_duration(p.run_time_s)}")
    elif p.flops_per_step:
        lines.append(f"  step         {_flops(p.flops_per_step)}")
    lines.append(f"  verdict      {p.suggestion}")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
