"""PNG plots for `kubetrain schedule --png`. matplotlib is the optional `plot` extra."""

from __future__ import annotations

from collections.abc import Sequence


def plot_lr(lrs: Sequence[float], out_png: str, title: str) -> None:
    """Plot the lr of optimizer steps 0 .. len(lrs) - 1 into `out_png`."""
    if not lrs:
        raise ValueError("no learning rates to plot (steps must be >= 1)")
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

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(len(lrs)), list(lrs), linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.savefig(out_png, format="png")
