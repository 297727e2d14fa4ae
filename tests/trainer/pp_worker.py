"""Rank-side code of tests/trainer/test_pipeline_parallel.py: ``python -m tests.trainer.pp_worker WORKDIR``.

Reads ``WORKDIR/payload.json``: ``runs`` (trained in turn in this process group; each rank's loss and
grad-norm history returned, and the parameter FQNs its stages hold). Writes ``WORKDIR/result<RANK>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kubetrain_trainer import config, distributed
from kubetrain_trainer.engine import Trainer


def main() -> None:
    workdir = Path(sys.argv[1])
    payload = json.loads((workdir / "payload.json").read_text())
    ctx = distributed.init(0, 300)
    out: dict[str, Any] = {"runs": []}
    for run in payload.get("runs", []):
        t0 = time.monotonic()
        trainer = Trainer(config.from_spec(run["spec"], world_size=ctx.world_size), ctx, None)
        try:
            summary = trainer.fit()
            out["runs"].append({
                "label": run["label"], "loss": [r["loss"] for r in summary.history],
                "grad_norm": [r["grad_norm"] for r in summary.history],
                "eval_loss": summary.eval_loss,
                "names": sorted(n for n, _ in trainer.par.inner.named_parameters()),
                "seconds": time.monotonic() - t0,
            })
        finally:
            trainer.close()
    (workdir / f"result{ctx.rank}.json").write_text(json.dumps(out))
    distributed.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
