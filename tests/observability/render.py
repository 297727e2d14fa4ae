"""Draw the dashboard's panels (dashboards/kubetrain.json) as one PNG with matplotlib, from the
series a real Prometheus returns for each panel's PromQL (query_range results)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

UNITS = {"percentunit": (100.0, "%"), "bytes": (1 / 2**20, "MiB")}  # Grafana unit -> (scale, label)
Series = list[dict[str, Any]]  # Prometheus matrix results: [{"metric": {...}, "values": [[t, "v"], ...]}]


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def draw(panels: list[tuple[dict[str, Any], list[tuple[str, Series]]]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.9 * rows), squeeze=False)
    t0 = min((float(v[0]) for _, targets in panels for _, series in targets for s in series for v in s["values"]),
             default=0.0)
    for ax, (panel, targets) in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, shown = UNITS.get(unit, (1.0, unit))
        for fmt, series in targets:
            for s in series:
                xs = [float(t) - t0 for t, _ in s["values"]]
                ys = [float(v) * scale for _, v in s["values"]]
                ax.plot(xs, ys, label=legend(fmt, s["metric"]), linewidth=1.6)
        ax.set_title(panel["title"] + (f"  [{shown}]" if shown not in ("", "none", "short") else ""), fontsize=10)
        ax.set_xlabel("seconds since Prometheus started", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
