"""Checkpoint write throughput vs the disk's sequential write (DESIGN.md target: ratio >= 0.7).

    python bench/checkpoint_io.py             # GPT 124M preset, fp32 + AdamW state (~1.6 GB), 8 rounds
    python bench/checkpoint_io.py --quick     # 124M widths with 4 layers (~1 GB), 6 rounds
    python bench/checkpoint_io.py --dir /mnt/ckpt --profile

Measured: `kubetrain_trainer.checkpoint.Checkpointer.save` (the module the trainer uses: the
finiteness check, DCP `FileSystemWriter(sync_files=True)` — every data file fsynced — with every
byte hashed (XXH3-64) as it is written, kubetrain.json, manifest.json, rename, `latest`) of a real
Trainer's state (model + AdamW moments after one step, strategy ddp), on 1 process and on 2 gloo
ranks (DCP deduplicates the replicated tensors, each rank writes about half).  Baseline, same run,
same directory: one process writing the same number of bytes with plain sequential 8 MiB write()
calls + fsync.  Ratio = checkpoint throughput / baseline throughput (target >= 0.7).

Load: `Checkpointer.restore()` — verification of every file against the manifest (each rank reads
and hashes a share), then the DCP load into the live model and optimizer — after the checkpoint's
pages were dropped from the page cache (posix_fadvise DONTNEED on its files, clean after the
fsync: only our files, nothing system-wide).  Baselines: a sequential read of the baseline file
after the same eviction, and the same restore with verification switched off (bench-side patch,
files evicted again): the verification cost, target <= 1.10 x.  Rounds alternate which of save
and plain write goes first.  Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, Row, exit_on_sigterm, print_table, stop

CHUNK = 8 << 20


def evict(paths: list[Path]) -> None:
    """Drop these (clean) files' pages from the page cache."""
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sequential_write(path: Path, nbytes: int, buf: memoryview) -> float:
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            n = min(left, len(buf))
            f.write(buf[:n])
            left -= n
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def sequential_read(path: Path) -> float:
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def spec(args: argparse.Namespace, world: int) -> dict[str, Any]:
    model: dict[str, Any] = {"preset": "124M", "seqLen": 32}
    if args.layers:
        model["nLayers"] = args.layers
    return {
        "model": model,
        "training": {"maxSteps": 10**6, "globalBatchSize": world, "microBatchSize": 1},
        "parallelism": {"strategy": args.strategy},
        "optimizer": {"type": "AdamW", "lr": 1e-4},
        "checkpoint": {"intervalSteps": 0, "keep": 100},
    }


def _section_times(prof: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the save's parts, from a cProfile of one save."""
    stats = pstats.Stats(prof, stream=io.StringIO())
    wanted = {
        ("checkpoint/state.py", "state_dict"): "state_dict (get_*_state_dict)",
        ("checkpoint/state.py", "non_finite"): "finiteness check (+ its all-reduce)",
        ("state_dict_saver.py", "save"): "dcp.save (total)",
        ("filesystem.py", "_write_files_from_queue"): "  write data files (incl. fsync)",
        ("serialization.py", "save"): "    torch.save of each tensor",
        ("posix", "fsync"): "  fsync (all)",
        ("checkpoint/manifest.py", "write"): "  of which hashing stream (XXH3-64 + write)",
        ("checkpoint/checkpointer.py", "_commit"): "commit (gather checksums, kubetrain.json, manifest, rename, latest)",
    }
    out: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == "<built-in method posix.fsync>":
            name, file = "fsync", "posix"
        for (wfile, wname), label in wanted.items():
            if name == wname and file.endswith(wfile):
                out[label] = out.get(label, 0.0) + ct
    return out


def what_if(variants: str) -> None:
    """Try a change to the save path without editing the trainer (for the report, not the target):
    torch-crc32: torch.save also computes its CRC32 of each record (the trainer switches it off: the
    manifest's XXH3-64 covers every byte); checksums-off: no XXH3-64 while writing either (DCP's
    plain FileSystemWriter; the load then verifies nothing but kubetrain.json); threads=N: DCP's
    FileSystemWriter with N writer threads (the module uses the default, 1)."""
    import functools

    import torch.distributed.checkpoint as dcp

    from kubetrain_trainer.checkpoint import checkpointer

    for v in filter(None, variants.split(",")):
        if v == "torch-crc32":
            checkpointer.TORCH_CRC32 = True
        elif v == "checksums-off":
            checkpointer.hashing_writer = (  # type: ignore[assignment]
                lambda path, _rec: dcp.FileSystemWriter(str(path), sync_files=True))
        elif v.startswith("threads="):
            dcp.FileSystemWriter = functools.partial(  # type: ignore[misc,assignment]
                dcp.FileSystemWriter, thread_count=int(v.split("=", 1)[1]))
        else:
            raise SystemExit(f"unknown --what-if {v!r}")


def rank_side(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from kubetrain_trainer import config, distributed
    from kubetrain_trainer.checkpoint import Checkpointer, dir_bytes, step_dir_name
    from kubetrain_trainer.checkpoint import restore as restore_mod
    from kubetrain_trainer.engine import Trainer

    torch.set_num_threads(1)
    what_if(args.what_if)
    ctx = distributed.init(0, 1800)
    rank, world = ctx.rank, ctx.world_size
    root = Path(args.root)
    cfg = config.from_spec(spec(args, world), world_size=world)
    t = time.perf_counter()
    trainer = Trainer(cfg, ctx, None)
    trainer.train_step()  # AdamW's moments exist from here on
    build = time.perf_counter() - t
    ckpt = Checkpointer(trainer, root)
    buf = memoryview(torch.randint(0, 256, (CHUNK,), dtype=torch.uint8).numpy().tobytes())
    rows: dict[str, list[float]] = {"save": [], "write": [], "load": [], "read": [], "verify": [],
                                    "load_unverified": []}
    sections: dict[str, list[float]] = {}

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    def timed_save(step: int, profile: bool = False) -> tuple[float, int]:
        barrier()
        prof = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        ckpt.save(step, blocking=True)
        if prof:
            prof.disable()
            for k, v in _section_times(prof).items():
                sections.setdefault(k, []).append(v)
        seconds = time.perf_counter() - t0
        nbytes = dir_bytes(root / step_dir_name(step)) if rank == 0 else 0
        return seconds, nbytes

    # Warm-up: DCP's first save plans and imports; also gives the size the baseline writes.
    _, nbytes = timed_save(1)
    nbytes = int(ckpt.comm.broadcast(nbytes))
    step = 1
    for r in range(args.rounds):
        for what in (("ckpt", "plain") if r % 2 == 0 else ("plain", "ckpt")):
            if what == "plain":
                barrier()
                if rank == 0:
                    path = root / "baseline.bin"
                    rows["write"].append(sequential_write(path, nbytes, buf))
                    evict([path])
                    rows["read"].append(sequential_read(path))
                    path.unlink()
                barrier()
            else:
                previous = root / step_dir_name(step)
                step += 1
                seconds, size = timed_save(step)
                rows["save"].append(seconds)
                if rank == 0:
                    assert abs(size - nbytes) < nbytes * 0.01, (size, nbytes)
                    shutil.rmtree(previous)  # outside the timed save (keep=100: the save prunes nothing)
                    evict([p for p in (root / step_dir_name(step)).iterdir()])
                barrier()
                t0 = time.perf_counter()
                ckpt.restore()
                barrier()
                rows["load"].append(time.perf_counter() - t0)
                rows["verify"].append(ckpt.verify_seconds or 0.0)  # part of the load: manifest checks
                # The same load without verification (its files evicted again): what verifying costs.
                if rank == 0:
                    evict([p for p in (root / step_dir_name(step)).iterdir()])
                barrier()
                verify, restore_mod.verify = restore_mod.verify, lambda _comm, _path: None
                try:
                    t0 = time.perf_counter()
                    ckpt.restore()
                    barrier()
                    rows["load_unverified"].append(time.perf_counter() - t0)
                finally:
                    restore_mod.verify = verify
                assert trainer.step == 1, trainer.step  # the state saved after one step
    if args.profile:  # one more save, under cProfile on rank 0, outside the measured rounds
        if rank == 0:
            shutil.rmtree(root / step_dir_name(step), ignore_errors=True)
        step += 1
        timed_save(step, profile=rank == 0)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"bytes": nbytes, "rows": rows, "sections": sections,
                                              "build_s": build, "world": world}))
    ckpt.close()
    trainer.close()
    distributed.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_world(args: argparse.Namespace, world: int, base: Path) -> dict[str, Any]:
    root = base / f"world{world}"
    root.mkdir(parents=True, exist_ok=True)
    out = base / f"result-{world}.json"
    argv = [sys.executable, __file__, "--rank-side", "--root", str(root), "--out", str(out),
            "--rounds", str(args.rounds), "--strategy", args.strategy, "--layers", str(args.layers or 0),
            "--what-if", args.what_if, *(["--profile"] if args.profile else [])]
    paths = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image"), os.environ.get("PYTHONPATH", "")])
    port = str(free_port())
    procs = []
    try:
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       OMP_NUM_THREADS="1", KUBETRAIN_METRICS_PORT="0", KUBETRAIN_DEVICE="cpu", PYTHONPATH=paths)
            procs.append(subprocess.Popen(argv, env=env, cwd=REPO))
        deadline = time.monotonic() + args.timeout
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"ranks: {[p.poll() for p in procs]} (timeout {args.timeout}s)")
            time.sleep(0.2)
    finally:
        for p in procs:
            stop(p, timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    return dict(json.loads(out.read_text()))


def _secs(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) + " s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 layers (~1 GB of state), 6 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds per world size (default 8; quick 6)")
    ap.add_argument("--layers", type=int, default=None, help="nLayers (default: the preset's 12; quick 4)")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "zero1"])
    ap.add_argument("--worlds", default="1,2", help="process counts to measure (default 1,2)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under $TMPDIR)")
    ap.add_argument("--profile", action="store_true",
                    help="one more save under cProfile (rank 0), after the measured rounds: where the time goes")
    ap.add_argument("--what-if", default="", metavar="torch-crc32,checksums-off,threads=N",
                    help="measure a change to the save path (bench-side patch, see what_if()); not the target")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--rank-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    exit_on_sigterm()
    if args.rank_side:
        args.layers = args.layers or None
        rank_side(args)
        return
    args.rounds = args.rounds or (6 if args.quick else 8)
    if args.layers is None and args.quick:
        args.layers = 4
    base = Path(tempfile.mkdtemp(prefix="kubetrain-bench-ckpt-", dir=args.dir))
    rows: list[Row] = []
    notes: list[str] = [f"directory {base} ({os.statvfs(base).f_bsize} B blocks); "
                        f"model 124M widths, {args.layers or 12} layers, fp32 + AdamW, strategy {args.strategy}"
                        + (f"; WHAT-IF {args.what_if} (not the trainer as it is)" if args.what_if else "")]
    try:
        for world in (int(w) for w in args.worlds.split(",")):
            print(f"{world} process(es): building the trainer, warm-up save, {args.rounds} rounds ...", flush=True)
            res = run_world(args, world, base)
            r, gb = res["rows"], res["bytes"] / 1e9
            save, write = statistics.median(r["save"]), statistics.median(r["write"])
            load, read = statistics.median(r["load"]), statistics.median(r["read"])
            print(f"  {gb:.2f} GB per checkpoint; saves {_secs(r['save'])}, plain writes {_secs(r['write'])}; "
                  f"loads {_secs(r['load'])}, plain reads {_secs(r['read'])} (trainer built in {res['build_s']:.0f}s)",
                  flush=True)
            for label, values in res["sections"].items():
                print(f"    {label:<50} {statistics.median(values):6.2f} s", flush=True)
            # Rounds pair a save with a plain write next to it in time: the median of the per-round
            # ratios is less at the mercy of the machine's load swings than a ratio of medians.
            w_ratio = statistics.median(w / s for w, s in zip(r["write"], r["save"], strict=True))
            r_ratio = statistics.median(w / s for w, s in zip(r["read"], r["load"], strict=True))
            best = min(r["write"]) / min(r["save"])
            rows.append(Row(f"save, {world} proc (GB/s, vs plain write+fsync)", gb / save, gb / write,
                            ">= 0.7 x", w_ratio >= 0.7, paired=w_ratio))
            rows.append(Row(f"  same, best of {len(r['save'])} each (GB/s)", gb / min(r["save"]),
                            gb / min(r["write"]), "-", None, paired=best))
            rows.append(Row(f"load, {world} proc (GB/s, vs plain read)", gb / load, gb / read, "-", None,
                            paired=r_ratio))
            rows.append(Row(f"load, {world} proc (s)", load, read, "-", None, " s"))
            plain = statistics.median(r["load_unverified"])
            cost = statistics.median(ld / u for ld, u in zip(r["load"], r["load_unverified"], strict=True))
            rows.append(Row(f"  load verified vs unverified, {world} proc (s)", load, plain, "<= 1.10 x",
                            cost <= 1.10, " s", paired=cost))
            rows.append(Row(f"  of which verification (cold read + hash), {world} proc (s)",
                            statistics.median(r["verify"]), load, "-", None, " s"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    notes.append("GB/s: medians over the rounds; ratio: median of the per-round ratios (each save paired with "
                 "the plain write of its round)")
    print_table("checkpoint I/O (baseline: the same bytes, plain sequential write + fsync / read, same directory)",
                rows, notes)


if __name__ == "__main__":
    main()
