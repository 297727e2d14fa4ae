"""bench/gpu.py --cpu-dry-run: the GPU bench's every section runs end to end on CPU (tiny model,
gloo), so the script is known to work before device time is spent on it (issue: GPU bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def test_cpu_dry_run_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--cpu-dry-run", "--out", str(out), "--budget-s", "900"],
        capture_output=True, text=True, timeout=1000, cwd=tmp_path, check=False,
    )
    data = json.loads((out / "results.json").read_text())
    failed = [c for c in data["checks"] if not c["ok"]]
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sections = {r["section"] for r in data["rows"]}
    assert sections == {"correctness", "speed", "plan"}, sections
    checks = {c["check"] for c in data["checks"]}
    assert {"ddp vs zero3 losses (bf16)", "fp16 trains with a loss scale",
            "checkpoint save + resume continues the curve", "kubetrain plan gave a memory figure"} <= checks
    speed = [r for r in data["rows"] if r["section"] == "speed"]
    assert len(speed) == 2 and all(r["tokens_per_s"] and r["bare_tokens_per_s"] for r in speed), speed
    # fp8 needs a GPU: the dry run says so in the results instead of inventing a figure
    assert any(s.startswith("fp8:") for s in data["skipped"]), data["skipped"]
    assert data["facts"]["mode"].startswith("cpu dry run")
    assert (out / "results.md").read_text().startswith("# bench/gpu.py results")
