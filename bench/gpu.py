"""GPU bench: NCCL correctness, bf16/fp16/fp8, torch.compile and MFU, in one bounded script.

    python bench/gpu.py --out results/            # on a GPU machine (<= 8 minutes wall)
    python bench/gpu.py --cpu-dry-run --out /tmp/x  # the same steps on a tiny model, CPU + gloo (CI)

Every run goes through the product's own entry point (`kubetrain local`, i.e. the pods' launcher
and torchrun's elastic agent), and its figures are read back from the run's `metrics.jsonl`. The
baseline for the trainer's overhead is a bare PyTorch loop of the same GPT (same autocast, fused
AdamW, same compile choice, pre-built batches on the device) measured in the same run.

Sections, each bounded by its own timeout and stopped with its process group:
  1. correctness: ddp vs zero3 (NCCL, bf16, 124M, 20 steps) agree within bf16 tolerance; fp16 with
     the dynamic loss scaler trains; a checkpoint is saved and the resumed run continues the curve;
  2. speed: 1.3B (seqLen 2048), bf16, one GPU: tokens/s, MFU and peak memory with torch.compile off
     and on, beside the bare loop (ratio = trainer overhead);
  3. fp8 (torchao float8 / torch._scaled_mm) vs bf16: tokens/s and the loss curve over 50 steps,
     only on GPUs with fp8 (compute capability >= 8.9);
  4. `kubetrain plan --gpu <this GPU> --json`: predicted memory and step time beside the measured.

Writes `<out>/results.json` and `<out>/results.md` (a markdown table) as it goes, so a run cut
short still leaves every figure measured so far. Nothing is printed that was not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "operator", REPO / "trainer_image"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# bf16 keeps 8 mantissa bits: two strategies that reduce in a different order drift apart by a
# few 1e-3 relative over 20 steps; fp32 agreement (2e-5) is what the CPU tiers prove.
BF16_REL_TOL = 2e-2
WALL_BUDGET_S = 8 * 60


@dataclass(frozen=True)
class Sizes:
    """What the bench trains: real sizes on a GPU, a tiny stand-in for the CPU dry run."""

    dry: bool
    correctness_preset: str
    speed_preset: str
    speed_seq_len: int | None
    procs: int
    steps_correct: int
    steps_speed: int
    steps_fp8: int
    global_batch: int
    micro_batch: int
    speed_global_batch: int
    speed_micro_batch: int

    @staticmethod
    def pick(dry: bool, gpus: int) -> Sizes:
        if dry:
            return Sizes(True, "tiny", "tiny", None, 2, 4, 5, 4, 8, 4, 4, 4)
        return Sizes(False, "124M", "1.3B", 2048, min(2, max(1, gpus)), 20, 30, 50, 32, 8, 8, 8)


@dataclass
class Results:
    out: Path
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def row(self, **kw: Any) -> None:
        self.rows.append(kw)
        self.save()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"facts": self.facts, "rows": self.rows, "checks": self.checks, "skipped": self.skipped}
        (self.out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        (self.out / "results.md").write_text(render_markdown(data))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
    return "-" if v is None else str(v)


def render_markdown(data: dict[str, Any]) -> str:
    lines = ["# bench/gpu.py results", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in data["facts"].items()]
    if data["rows"]:
        keys = list(dict.fromkeys(k for r in data["rows"] for k in r))
        lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data["rows"]]
    if data["checks"]:
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c['check']} | {'PASS' if c['ok'] else 'FAIL'} | {c['detail']} |" for c in data["checks"]]
    if data["skipped"]:
        lines += ["", "Not measured:"] + [f"- {s}" for s in data["skipped"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ runs


def job_spec(name: str, *, preset: str, seq_len: int | None, steps: int, strategy: str, dtype: str,
             gpus: int, procs: int, global_batch: int, micro_batch: int, compile_: bool = False,
             interval: int | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"preset": preset}
    if seq_len:
        model["seqLen"] = seq_len
    spec: dict[str, Any] = {
        "workers": {"replicas": 1, "gpusPerWorker": gpus, "procsPerWorker": procs},
        "model": model,
        "training": {"maxSteps": steps, "globalBatchSize": global_batch, "microBatchSize": micro_batch,
                     "seed": 1234, "compile": compile_},
        "parallelism": {"strategy": strategy},
        "precision": {"dtype": dtype},
        "optimizer": {"type": "AdamW", "lr": 3e-4},
    }
    if interval:
        spec["checkpoint"] = {"intervalSteps": interval}
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


@dataclass
class Run:
    rc: int
    seconds: float
    records: list[dict[str, Any]]
    log_tail: str

    @property
    def losses(self) -> list[float]:
        return [float(r["loss"]) for r in self.records if r.get("loss") is not None]

    def median(self, key: str, skip: int = 2) -> float | None:
        vals = sorted(float(r[key]) for r in self.records[skip:] if r.get(key) is not None)
        return vals[len(vals) // 2] if vals else None

    def peak(self, key: str) -> float | None:
        vals = [float(r[key]) for r in self.records if r.get(key) is not None]
        return max(vals) if vals else None


def run_job(doc: dict[str, Any], run_dir: Path, timeout_s: float, env: dict[str, str]) -> Run:
    """`kubetrain local` on one spec, in its own process group, killed whole on timeout."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir.parent / f"{doc['metadata']['name']}.json"
    spec_path.write_text(json.dumps(doc))
    cmd = [sys.executable, "-m", "kubetrain", "local", str(spec_path), "--run-dir", str(run_dir), "-q"]
    t0 = time.monotonic()
    with open(run_dir.parent / f"{doc['metadata']['name']}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = (run_dir.parent / f"{doc['metadata']['name']}.log").read_text(errors="replace")[-1500:]
    records = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if "step" in rec and "loss" in rec:
                    records.append(rec)
    return Run(rc, time.monotonic() - t0, records, tail)


def max_rel_diff(a: list[float], b: list[float]) -> float:
    n = min(len(a), len(b))
    if n == 0:
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a[:n], b[:n], strict=True))


# ------------------------------------------------------------------------------ sections


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available() and not args.cpu_dry_run
        self.gpus = torch.cuda.device_count() if self.cuda else 0
        self.sizes = Sizes.pick(not self.cuda, self.gpus)
        self.deadline = time.monotonic() + args.budget_s
        self.work = Path(args.out) / "runs"
        shutil.rmtree(self.work, ignore_errors=True)
        self.res = Results(Path(args.out))
        self.env = dict(os.environ)
        if not self.cuda:
            self.env["KUBETRAIN_DEVICE"] = "cpu"
            self.env["KUBETRAIN_COMPILE_BACKEND"] = "eager"  # the compile path, without a C compiler run
        self.gpu_name = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        self.res.facts.update({
            "mode": "gpu" if self.cuda else "cpu dry run (tiny model, gloo)",
            "device": self.gpu_name, "gpus": self.gpus, "torch": torch.__version__,
            "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())) if self.cuda else None,
            "driver": _driver_version() if self.cuda else None,
        })
        self.res.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def job(self, name: str, timeout_s: float, **kw: Any) -> Run:
        s = self.sizes
        kw.setdefault("gpus", 1 if self.cuda else 0)
        kw.setdefault("procs", s.procs)
        kw.setdefault("global_batch", s.global_batch)
        kw.setdefault("micro_batch", s.micro_batch)
        doc = job_spec(name, **kw)
        return run_job(doc, self.work / name, min(timeout_s, max(1.0, self.left() - 5)), self.env)

    def correctness(self) -> None:
        s = self.sizes
        dtype = "bf16"
        runs = {st: self.job(f"correct-{st}", 120, preset=s.correctness_preset, seq_len=None,
                             steps=s.steps_correct, strategy=st, dtype=dtype) for st in ("ddp", "zero3")}
        for st, r in runs.items():
            self.res.row(section="correctness", run=f"{st} {dtype}", rc=r.rc, steps=len(r.records),
                         first_loss=r.losses[0] if r.losses else None,
                         last_loss=r.losses[-1] if r.losses else None, seconds=round(r.seconds, 1))
        diff = max_rel_diff(runs["zero3"].losses, runs["ddp"].losses)
        ok = all(r.rc == 0 and len(r.losses) == s.steps_correct for r in runs.values()) and diff <= BF16_REL_TOL
        self.res.check("ddp vs zero3 losses (bf16)", ok, f"max relative difference {diff:.2e} (tolerance {BF16_REL_TOL})")

        fp16 = self.job("correct-fp16", 120, preset=s.correctness_preset, seq_len=None, steps=s.steps_correct,
                        strategy="ddp", dtype="fp16")
        scales = [r.get("loss_scale") for r in fp16.records if r.get("loss_scale") is not None]
        finite = bool(fp16.losses) and all(math.isfinite(x) for x in fp16.losses)
        self.res.row(section="correctness", run="ddp fp16 (dynamic scaler)", rc=fp16.rc, steps=len(fp16.records),
                     first_loss=fp16.losses[0] if fp16.losses else None,
                     last_loss=fp16.losses[-1] if fp16.losses else None, seconds=round(fp16.seconds, 1))
        self.res.check("fp16 trains with a loss scale", fp16.rc == 0 and finite and bool(scales),
                       f"final loss scale {scales[-1] if scales else None}, losses finite: {finite}")
        self.resume_check()

    def resume_check(self) -> None:
        s = self.sizes
        half = s.steps_correct // 2
        common: dict[str, Any] = dict(preset=s.correctness_preset, seq_len=None, strategy="ddp", dtype="fp32", interval=half)
        full = self.job("resume-full", 120, steps=s.steps_correct, **common)
        first = self.job("resume-part", 120, steps=half, **common)
        # the same run directory with more steps: the launcher resumes from the committed checkpoint
        second_doc = job_spec("resume-part", steps=s.steps_correct, gpus=1 if self.cuda else 0, procs=s.procs,
                              global_batch=s.global_batch, micro_batch=s.micro_batch, **common)
        second = run_job(second_doc, self.work / "resume-part", min(120, self.left()), self.env)
        resumed = [float(r["loss"]) for r in second.records if int(r["step"]) > half]
        expect = [float(r["loss"]) for r in full.records if int(r["step"]) > half]
        diff = max_rel_diff(resumed, expect)
        ok = first.rc == 0 and second.rc == 0 and len(resumed) == len(expect) > 0 and diff <= 1e-4
        self.res.check("checkpoint save + resume continues the curve", ok,
                       f"{len(resumed)} resumed steps, max relative difference {diff:.2e} vs uninterrupted")

    def speed(self) -> None:
        s = self.sizes
        for compile_ in (False, True):
            if self.left() < 60:
                self.res.skipped.append(f"speed compile={compile_}: out of time")
                continue
            run = self.job(f"speed-compile-{int(compile_)}", 180, preset=s.speed_preset, seq_len=s.speed_seq_len,
                           steps=s.steps_speed, strategy="ddp", dtype="bf16",
                           procs=1, global_batch=s.speed_global_batch, micro_batch=s.speed_micro_batch,
                           compile_=compile_)
            bare = self.bare_loop(compile_) if self.left() > 45 else None
            tps = run.median("tokens_per_s")
            self.res.row(section="speed", run=f"{s.speed_preset} bf16 compile={'on' if compile_ else 'off'}",
                         rc=run.rc, steps=len(run.records), tokens_per_s=tps, mfu=run.median("mfu"),
                         peak_mem_gib=(run.peak("peak_mem") or 0) / 2**30, bare_tokens_per_s=bare,
                         overhead=(bare / tps) if bare and tps else None, seconds=round(run.seconds, 1))
            self.res.check(f"speed run compile={compile_} completed", run.rc == 0 and bool(run.records),
                           f"rc {run.rc}, {len(run.records)} steps")

    def bare_loop(self, compile_: bool) -> float | None:
        """Tokens/s of a plain loop over the same GPT, in a child process (fresh CUDA context)."""
        cmd = [sys.executable, str(Path(__file__)), "--bare", self.sizes.speed_preset,
               "--bare-seq-len", str(self.sizes.speed_seq_len or 0), "--bare-steps", str(self.sizes.steps_speed),
               "--bare-batch", str(self.sizes.speed_micro_batch)] + (["--bare-compile"] if compile_ else [])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                 timeout=min(150, max(1.0, self.left() - 5)), check=False)
        except subprocess.TimeoutExpired:
            return None
        for line in out.stdout.splitlines():
            if line.startswith("bare_tokens_per_s="):
                return float(line.split("=", 1)[1])
        return None

    def fp8(self) -> None:
        s = self.sizes
        if not self.cuda or self.torch.cuda.get_device_capability(0) < (8, 9):
            self.res.skipped.append("fp8: needs a GPU with compute capability >= 8.9")
            return
        runs = {}
        for dtype in ("bf16", "fp8"):
            runs[dtype] = self.job(f"fp8-{dtype}", 150, preset=s.correctness_preset, seq_len=None,
                                   steps=s.steps_fp8, strategy="ddp", dtype=dtype, procs=1)
            r = runs[dtype]
            self.res.row(section="fp8", run=f"{s.correctness_preset} {dtype}", rc=r.rc, steps=len(r.records),
                         tokens_per_s=r.median("tokens_per_s"), last_loss=r.losses[-1] if r.losses else None,
                         seconds=round(r.seconds, 1))
        a, b = runs["fp8"].losses, runs["bf16"].losses
        diff = abs(a[-1] - b[-1]) / abs(b[-1]) if a and b else math.inf
        self.res.check("fp8 loss curve tracks bf16 (final loss within 5 %)", diff <= 0.05, f"relative {diff:.2e}")

    def plan(self) -> None:
        s = self.sizes
        doc = job_spec("plan", preset=s.speed_preset, seq_len=s.speed_seq_len, steps=s.steps_speed, strategy="ddp",
                       dtype="bf16", gpus=1, procs=1, global_batch=s.speed_global_batch,
                       micro_batch=s.speed_micro_batch)
        path = self.work / "plan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        gpu = "H200" if not self.cuda else self.gpu_name
        out = subprocess.run([sys.executable, "-m", "kubetrain", "plan", str(path), "--gpu", gpu, "--json"],
                             capture_output=True, text=True, env=self.env, timeout=60, check=False)
        if out.returncode != 0:
            self.res.check("kubetrain plan ran", False, out.stdout.strip()[-300:] + out.stderr.strip()[-300:])
            return
        plan = json.loads(out.stdout)
        mem: dict[str, Any] = next((m for m in plan.get("memory", []) if m.get("strategy") == "ddp"), {})
        measured = [r for r in self.res.rows if r.get("section") == "speed" and r.get("peak_mem_gib")]
        peak = measured[0]["peak_mem_gib"] if measured else None
        predicted = (mem.get("total_bytes") or 0) / 2**30
        self.res.row(section="plan", run=f"plan --gpu {gpu}", predicted_mem_gib=predicted, measured_mem_gib=peak,
                     mem_ratio=(peak / predicted) if peak and predicted else None,
                     predicted_step_s=plan.get("step_time_s"))
        self.res.check("kubetrain plan gave a memory figure", predicted > 0, f"{predicted:.3f} GiB predicted")


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def bare(preset: str, seq_len: int, steps: int, batch: int, compile_: bool) -> None:
    """The baseline: the same GPT, bf16 autocast, fused AdamW where CUDA, batches pre-built."""
    import torch
    import torch.nn.functional as F

    from kubetrain.api.modelsize import gpt_size
    from kubetrain_trainer.models.gpt import GPT, GPTConfig

    size = gpt_size(preset, seq_len=seq_len or None)
    cuda = torch.cuda.is_available() and os.environ.get("KUBETRAIN_DEVICE") != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(GPTConfig(size.n_layers, size.n_heads, size.d_model, size.vocab_size, size.seq_len))
    opt_kw: dict[str, Any] = {"fused": True} if cuda else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, **opt_kw)
    fwd = torch.compile(model, backend=os.environ.get("KUBETRAIN_COMPILE_BACKEND", "inductor")) if compile_ else model
    data = torch.randint(0, size.vocab_size, (batch, size.seq_len + 1), device=device)
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = fwd(data[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[2:] or times)
    print(f"bare_tokens_per_s={batch * size.seq_len / steady[len(steady) // 2]:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-gpu-results", help="results directory (JSON + markdown)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny model on CPU/gloo: proves the script works")
    ap.add_argument("--budget-s", type=float, default=WALL_BUDGET_S, help="wall-clock budget of the whole bench")
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    ap.add_argument("--bare-seq-len", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bare-steps", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--bare-batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--bare-compile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare:
        bare(args.bare, args.bare_seq_len, args.bare_steps, args.bare_batch, args.bare_compile)
        return 0
    b = Bench(args)
    for section in (b.correctness, b.speed, b.fp8, b.plan):
        if b.left() < 20:
            b.res.skipped.append(f"{section.__name__}: out of time")
            continue
        section()
    b.res.save()
    print(render_markdown(json.loads((b.res.out / "results.json").read_text())))
    return 0 if all(c["ok"] for c in b.res.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
