"""Generate the Grafana dashboard `dashboards/kubetrain.json` and its copies in the chart and the
kustomize monitoring component: `python dashboards/generate.py` (tests/observability checks that
the committed files equal its output and that every query returns data from a real scrape).

Variables: datasource (Prometheus), namespace, job (the TrainingJob: label `trainingjob`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = (
    REPO / "dashboards" / "kubetrain.json",
    REPO / "charts" / "kubetrain" / "dashboards" / "kubetrain.json",
    REPO / "manifests" / "monitoring" / "kubetrain-dashboard.json",
)
UID = "kubetrain-trainingjob"
SEL = 'namespace="$namespace", trainingjob="$job"'
DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(legend, PromQL)], width): the panels, in reading order.
PANELS: list[tuple[str, str, list[tuple[str, str]], int]] = [
    ("Loss", "none", [("loss", f"avg by (trainingjob) (kubetrain_trainer_loss{{{SEL}}})")], 12),
    ("Learning rate", "none", [("learning rate", f"avg by (trainingjob) (kubetrain_trainer_learning_rate{{{SEL}}})")], 12),
    ("Tokens per second", "short", [("tokens/s", f"avg by (trainingjob) (kubetrain_trainer_tokens_per_second{{{SEL}}})")], 8),
    ("MFU", "percentunit", [("MFU", f"avg by (trainingjob) (kubetrain_trainer_mfu_ratio{{{SEL}}})")], 8),
    ("Step time", "s", [("step time", f"max by (trainingjob) (kubetrain_trainer_step_duration_seconds{{{SEL}}})")], 8),
    ("Gradient norm", "none", [("grad norm", f"avg by (trainingjob) (kubetrain_trainer_grad_norm{{{SEL}}})")], 8),
    ("Loss scale", "none", [("loss scale", f"min by (trainingjob) (kubetrain_trainer_loss_scale{{{SEL}}})")], 8),
    ("Device memory (peak, per worker)", "bytes",
     [("{{pod}} {{device}}", f"max by (pod, device) (kubetrain_trainer_device_memory_peak_bytes{{{SEL}}})")], 8),
    ("Workers desired / ready", "short", [
        ("desired", f"max by (trainingjob) (kubetrain_trainingjob_workers_desired{{{SEL}}})"),
        ("ready", f"max by (trainingjob) (kubetrain_trainingjob_workers_ready{{{SEL}}})"),
    ], 8),
    ("Restarts by cause", "short", [("{{cause}}", f"sum by (cause) (kubetrain_trainingjob_restarts_total{{{SEL}}})")], 8),
    ("Checkpoint age", "s", [
        ("age", f"time() - max by (trainingjob) (kubetrain_trainer_checkpoint_last_timestamp_seconds{{{SEL}}})"),
    ], 8),
    ("Checkpoint save duration", "s", [
        ("save", f"max by (trainingjob) (kubetrain_trainer_checkpoint_duration_seconds{{{SEL}}})"),
    ], 8),
    ("Progress (steps)", "short", [
        ("step", f"max by (trainingjob) (kubetrain_trainer_step{{{SEL}}})"),
        ("max steps", f"max by (trainingjob) (kubetrain_trainer_max_steps{{{SEL}}})"),
    ], 12),
    ("Phase", "none", [("{{phase}}", f"max by (phase) (kubetrain_trainingjob_status_phase{{{SEL}}}) == 1")], 12),
]


def build_panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int, w: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 5}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                     "range": True}
                    for i, (legend, expr) in enumerate(targets)],
    }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "sort": 1, "includeAll": False, "multi": False, "current": {}, "options": [],
    }


def build_dashboard() -> dict[str, Any]:
    panels, x, y, row_h = [], 0, 0, 8
    for pid, (title, unit, targets, w) in enumerate(PANELS, start=1):
        if x + w > 24:
            x, y = 0, y + row_h
        panels.append(build_panel(pid, title, unit, targets, x, y, w))
        x += w
    return {
        "uid": UID,
        "title": "Kubetrain: TrainingJob",
        "description": "Loss, throughput, MFU, step time, memory, workers, restarts and checkpoints of one "
                       "TrainingJob (metrics: docs/metrics.md).",
        "tags": ["kubetrain", "training"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "options": [], "refresh": 1, "hide": 0},
            variable("namespace", "Namespace", "label_values(kubetrain_trainer_step, namespace)"),
            variable("job", "TrainingJob", 'label_values(kubetrain_trainer_step{namespace="$namespace"}, trainingjob)'),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        stale = [str(p.relative_to(REPO)) for p in OUTPUTS if not p.exists() or p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}: run python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
