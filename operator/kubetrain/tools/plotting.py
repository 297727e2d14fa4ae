"""PNG plots for `kubetrain schedule --png` and `kubetrain plot`. matplotlib is the optional `plot` extra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_lr(lrs: Sequence[float], out_png: str, title: str) -> None:
    """Plot the lr of optimizer steps 0 .. len(lrs) - 1 into `out_png`."""
    if not lrs:
        raise ValueError("no learning rates to plot (steps must be >= 1)")
    fig = _figure((8, 4.5))
    ax = fig.add_subplot()
    ax.plot(range(len(lrs)), list(lrs), linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.savefig(out_png, format="png")


def _figure(size: tuple[float, float]) -> Any:
    try:
        # Imported here so the base install works without matplotlib. Figure +
        # the Agg canvas directly: no pyplot global state, no display needed,
        # and the process-wide backend stays untouched.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib, an optional extra: pip install 'kubetrain[plot]'"
        ) from exc
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_run(history: Sequence[dict[str, Any]], out_png: str | Path, title: str) -> None:
    """Loss, learning rate and tokens/s against the step, from a run's metrics log."""
    steps = [int(r["step"]) for r in history]
    fig = _figure((8, 8))
    panels = (("loss", "training loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens / s"))
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        points = [(s, r[key]) for s, r in zip(steps, history, strict=True) if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("optimizer step")
    fig.savefig(str(out_png), format="png")
