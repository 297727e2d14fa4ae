"""docs/metrics.md's table is the code's metrics: name, type, labels and HELP text, both sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetrain.api.models import TrainingJobStatus
from kubetrain.controller.metrics import CAUSES, PHASES, OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"
Row = tuple[str, str, tuple[str, ...], str, str]  # name, type, labels, source, meaning


def documented() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z_:]+)` \| (\w+) \| ([^|]*) \| (\w+) \| (.*) \|$", line)
        if m:
            name, kind, labels, source, meaning = m.groups()
            assert name not in rows, f"docs/metrics.md lists {name} twice"
            rows[name] = (name, kind, tuple(re.findall(r"`([a-z_]+)`", labels)), source, meaning.strip())
    return rows


def exported() -> dict[str, Row]:
    from kubetrain_trainer.metrics import Progress

    progress = Progress(10, 2, trainingjob="j", checkpoint_interval=5)
    # every lazily created series: MFU, checkpoint duration
    progress.update({"step": 1, "loss": 1.0, "lr": 0.1, "mfu": 0.3, "peak_mem": 10, "skipped_steps": 1})
    progress.checkpoint_committed(1, 0.5)
    operator = OperatorMetrics()
    operator.job_status(("ns", "j"), TrainingJobStatus.model_validate(
        {"phase": "Running", "workers": {"desired": 2, "ready": 2}, "restarts": {"failure": 1}}))
    out: dict[str, Row] = {}
    for source, registry in (("trainer", progress.registry), ("operator", operator.registry)):
        for fam in registry.collect():
            name = fam.name + ("_total" if fam.type == "counter" else "")
            labels = tuple(sorted({k for s in fam.samples for k in s.labels if k != "le"}))
            out[name] = (name, fam.type, labels, source, fam.documentation)
    return out


def test_every_metric_is_documented_exactly() -> None:
    doc, code = documented(), exported()
    assert len(doc) >= 25, "the table in docs/metrics.md was not parsed"
    assert sorted(set(code) - set(doc)) == [], "metrics missing from docs/metrics.md"
    assert sorted(set(doc) - set(code)) == [], "docs/metrics.md lists metrics the code does not export"
    for name in code:
        assert doc[name] == code[name], f"docs/metrics.md row of {name} differs from the code"


@pytest.mark.parametrize("name", sorted(exported()))
def test_names_follow_prometheus_conventions(name: str) -> None:
    _, kind, labels, source, _ = exported()[name]
    assert name.startswith("kubetrain_")
    assert (kind == "counter") == name.endswith("_total"), "counters, and only counters, end in _total"
    if source == "trainer":
        assert "trainingjob" in labels, "every trainer series names its TrainingJob"
    assert "job" not in labels and "instance" not in labels, "job/instance belong to the scrape"
    for unit in ("seconds", "bytes", "ratio"):
        assert not name.endswith(f"_{unit}_total") or kind == "counter"


def test_operator_per_job_series_follow_the_job() -> None:
    """Bounded labels: one set of series per live job; a deleted job's series go."""
    m = OperatorMetrics()
    status = TrainingJobStatus.model_validate({"phase": "Pending", "workers": {"desired": 4, "ready": 1},
                                               "restarts": {"failure": 2, "stall": 1}})
    m.job_status(("a", "one"), status)
    m.job_status(("b", "two"), status)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in m.registry.collect() for s in fam.samples}
    assert samples[("kubetrain_trainingjob_status_phase",
                    (("namespace", "a"), ("phase", "Pending"), ("trainingjob", "one")))] == 1
    assert samples[("kubetrain_trainingjob_status_phase",
                    (("namespace", "a"), ("phase", "Running"), ("trainingjob", "one")))] == 0
    assert samples[("kubetrain_trainingjob_workers_desired", (("namespace", "b"), ("trainingjob", "two")))] == 4
    assert samples[("kubetrain_trainingjob_restarts_total",
                    (("cause", "failure"), ("namespace", "a"), ("trainingjob", "one")))] == 2
    m.job_phase(("a", "one"), None)  # the job is deleted
    names = {(s.labels.get("trainingjob")) for fam in m.registry.collect() for s in fam.samples}
    assert "one" not in names and "two" in names
    per_job = [s for fam in m.registry.collect() for s in fam.samples if s.name.startswith("kubetrain_trainingjob_")]
    assert len(per_job) == len(PHASES) + 2 + len(CAUSES)
