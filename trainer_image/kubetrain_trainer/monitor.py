"""DeepSpeed's `tensorboard` and `csv_monitor` blocks, written for real (rank 0, every logged step).

Both write under ``output_path/job_name`` (DeepSpeed's layout; a relative output_path is taken relative to
the run directory): TensorBoard event files (``torch.utils.tensorboard``, the ``tensorboard`` package), and
for csv_monitor one ``<name>.csv`` per metric with a ``step,<name>`` header, as DeepSpeed's csvMonitor does.
The metrics: loss, learning rate, gradient norm, loss scale and tokens/s, tagged ``Train/<name>`` and stepped
by optimizer step.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from kubetrain.api.deepspeed import Monitor, monitors

METRICS = ("loss", "lr", "grad_norm", "loss_scale", "tokens_per_s")


class StepMonitor(Protocol):
    def __call__(self, trainer: Any, rec: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _values(rec: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = []
    for name in METRICS:
        value = rec.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((f"Train/{name}", float(value)))
    return out


def log_dir(m: Monitor, run_dir: Path) -> Path:
    base = Path(m.output_path) if m.output_path else Path()
    return (base if base.is_absolute() else run_dir / base) / m.job_name


class TensorBoardMonitor:
    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package (trainer extra)

        directory.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(directory))

    def __call__(self, trainer: Any, rec: Mapping[str, Any]) -> None:
        for tag, value in _values(rec):
            self.writer.add_scalar(tag, value, int(rec["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvMonitor:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def __call__(self, trainer: Any, rec: Mapping[str, Any]) -> None:
        for tag, value in _values(rec):
            path = self.directory / (tag.replace("/", "_") + ".csv")
            new = not path.exists()
            with path.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", tag.rsplit("/", 1)[-1]])
                w.writerow([int(rec["step"]), value])

    def close(self) -> None:
        pass


def open_monitors(deepspeed: Mapping[str, Any] | None, run_dir: Path) -> list[StepMonitor]:
    """The monitors a DeepSpeed config enables (empty without tensorboard / csv_monitor)."""
    out: list[StepMonitor] = []
    for m in monitors(deepspeed):
        directory = log_dir(m, run_dir)
        out.append(TensorBoardMonitor(directory) if m.kind == "tensorboard" else CsvMonitor(directory))
    return out
