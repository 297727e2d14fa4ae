"""A real Prometheus scrapes a `kubetrain local` run's workers and a running operator with the
scrape config docs/observability.md gives; the HTTP query API finds the run's series with the
right labels and the operator's job counts; every query of the Grafana dashboard (and its
variables) returns data; the chart's alerts, loaded into the same Prometheus, stay silent on
this healthy run; the dashboard's panels are drawn from the scraped data (docs/img/dashboard.png
when KUBETRAIN_UPDATE_DOCS=1).

The TrainingJob `llm` is applied to the test cluster (the operator serves it; KWOK runs its
pods) and the same spec, same name and namespace, is trained by `kubetrain local`: one dashboard
shows both the trainer's and the operator's series of one job, as in a real cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import Cluster, wait_for
from tests.e2e.harness import operator_kubeconfig
from tests.observability import prom, render
from tests.observability.conftest import ALL_ON, docs, helm_template, rule_groups

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "kubetrain.json"
DOC = REPO / "docs" / "observability.md"
JOB, STEPS, INTERVAL, WORKERS = "llm", 20, 10, 2


def job_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": JOB, "namespace": namespace},
        "spec": {
            "workers": {"replicas": WORKERS, "procsPerWorker": 1},
            "model": {"preset": "tiny"},
            "training": {"maxSteps": STEPS, "globalBatchSize": 8, "microBatchSize": 4},
            "optimizer": {"lr": 0.003},
            "checkpoint": {"intervalSteps": INTERVAL},
        },
    }


def documented_scrape_config(run_dir: Path, operator: str) -> list[dict[str, Any]]:
    """The fenced YAML after <!-- scrape-config --> in docs/observability.md, placeholders filled."""
    m = re.search(r"<!-- scrape-config -->\s*```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/observability.md lost its scrape-config block"
    text = m.group(1).replace("RUN_DIR", str(run_dir)).replace("OPERATOR_HOST:8080", operator)
    return list(yaml.safe_load(text)["scrape_configs"])


class OperatorProc:
    """`kubetrain operator` under its ServiceAccount, metrics on a loopback port."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.metrics, self.health = prom.free_port(), prom.free_port()
        argv = [sys.executable, "-m", "kubetrain", "operator", "--namespace", namespace,
                "--kubeconfig", str(kubeconfig), "--bind-address", "127.0.0.1",
                "--metrics-port", str(self.metrics), "--health-port", str(self.health),
                "--resync-seconds", "2", "--progress-seconds", "1", "--log-format", "json"]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        wait_for(self.healthy, 60, "operator /healthz")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def operator(cluster: Cluster, trainingjob_crd: str, namespace: str, tmp_path: Path) -> Iterator[OperatorProc]:
    kubeconfig = operator_kubeconfig(cluster, tmp_path / "operator-kubeconfig")
    op = OperatorProc(kubeconfig, namespace, tmp_path / "operator.log")
    yield op
    op.stop()


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for s in result for _, v in s["values"]]


def test_prometheus_scrapes_a_local_run_and_the_operator(cluster: Cluster, namespace: str, operator: OperatorProc,
                                                          helm: str, prometheus_bin: str, tmp_path: Path) -> None:
    manifest = job_manifest(namespace)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(manifest))
    cluster.kubectl("apply", "-f", str(spec_file))

    # the chart's alerts, loaded into the same Prometheus
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(docs(helm_template(helm, *ALL_ON).stdout))))

    run_dir = tmp_path / "run"
    # declared peak: MFU is defined on CPU; steps paced (test-only fault knob) so that every step's
    # values stay up longer than the 1 s scrape interval: the last step's too, before the run ends
    env = {**os.environ, "KUBETRAIN_PEAK_FLOPS": "1e11", "KUBETRAIN_FAULT_STEP_SLEEP_SECONDS": "1.5"}
    local = subprocess.Popen([sys.executable, "-m", "kubetrain", "local", str(spec_file), "--workers", str(WORKERS),
                              "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=REPO, start_new_session=True)
    server = None
    try:
        targets_file = wait_for(lambda: (run_dir / "prometheus-targets.json").exists() and
                                run_dir / "prometheus-targets.json", 60, "the run's prometheus-targets.json")
        groups = json.loads(targets_file.read_text())
        assert [g["labels"] for g in groups] == [{"namespace": namespace, "pod": f"local-worker-{i}"}
                                                 for i in range(WORKERS)]
        scrape = documented_scrape_config(run_dir, f"127.0.0.1:{operator.metrics}")
        server = prom.Prometheus(tmp_path / "prometheus", scrape, rule_files=[str(rules)]).start()
        start = time.time()
        out, err = local.communicate(timeout=600)
        assert local.returncode == 0, err[-3000:]
        assert f"steps           {STEPS} / {STEPS}" in out
        time.sleep(3)  # a last scrape of the operator
        end = time.time()
        check_series(server, namespace, start, end)
        check_dashboard(server, namespace, start, end, tmp_path)
        # healthy run, operator up: no alert fired (the rules were loaded and evaluated)
        loaded = server.api("rules")["groups"]
        assert sorted(r["name"] for g in loaded for r in g["rules"]) == sorted(
            r["alert"] for g in rule_groups(docs(helm_template(helm, *ALL_ON).stdout))["groups"] for r in g["rules"])
        assert all(r["health"] == "ok" for g in loaded for r in g["rules"]), loaded
        assert server.query_range('ALERTS{alertstate="firing"}', start, end) == []
        # pending only before the first scrapes (absent operator metrics at Prometheus' start)
        assert server.query_range("ALERTS", start + 10, end) == []
    finally:
        if local.poll() is None:
            os.killpg(local.pid, signal.SIGINT)
            local.wait(60)
        if server is not None:
            server.stop()


def check_series(server: prom.Prometheus, namespace: str, start: float, end: float) -> None:
    sel = f'namespace="{namespace}", trainingjob="{JOB}"'
    # targets: both workers and the operator were up
    up = server.query_range('up{job=~"kubetrain-local|kubetrain-operator"}', start, end)
    assert {(s["metric"]["job"], s["metric"].get("pod", "")) for s in up} >= {
        ("kubetrain-local", "local-worker-0"), ("kubetrain-local", "local-worker-1"), ("kubetrain-operator", "")}
    loss = server.query_range(f"kubetrain_trainer_loss{{{sel}}}", start, end)
    assert sorted(s["metric"]["pod"] for s in loss) == ["local-worker-0", "local-worker-1"]
    for s in loss:
        labels = s["metric"]
        assert labels["job"] == "kubetrain-local" and labels["trainingjob"] == JOB and labels["namespace"] == namespace
        assert len(s["values"]) >= 5, "the loss was scraped a few times during the run"
    first, last = float(loss[0]["values"][0][1]), float(loss[0]["values"][-1][1])
    assert 0 < last < first, f"the scraped loss falls over the run ({first} -> {last})"
    steps = server.query(f"max(max_over_time(kubetrain_trainer_step{{{sel}}}[10m]))", at=end)
    assert float(steps[0]["value"][1]) == STEPS
    tps = values(server.query_range(f"kubetrain_trainer_tokens_per_second{{{sel}}}", start, end))
    assert tps and min(tps) >= 0 and max(tps) > 0
    ckpt = server.query(f"max(max_over_time(kubetrain_trainer_checkpoint_last_step{{{sel}}}[10m]))", at=end)
    assert float(ckpt[0]["value"][1]) >= STEPS - INTERVAL
    # the operator: job counts by phase, and the job's own series
    jobs = server.query_range('sum(kubetrain_jobs{job="kubetrain-operator"})', start, end)
    assert max(values(jobs)) >= 1
    desired = values(server.query_range(f"kubetrain_trainingjob_workers_desired{{{sel}}}", start, end))
    assert desired and max(desired) == WORKERS
    phases = server.query_range(f'kubetrain_trainingjob_status_phase{{{sel}}} == 1', start, end)
    assert {s["metric"]["phase"] for s in phases} <= {"Pending", "Running"} and phases
    assert server.query("kubetrain_operator_build_info", at=end)


def check_dashboard(server: prom.Prometheus, namespace: str, start: float, end: float, tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    # the variables: Grafana's label_values(metric{...}, label) is the label-values API
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name, want in (("namespace", namespace), ("job", JOB)):
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", variables[name]["query"]["query"])
        assert m, variables[name]
        match = m.group(1).replace("$namespace", namespace)
        found = server.api(f"label/{m.group(2)}/values", **{"match[]": match, "start": start, "end": end})
        assert want in found, f"variable {name}: {found}"
    drawn = []
    for panel in dash["panels"]:
        results = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$namespace", namespace).replace("$job", JOB)
            server.api("format_query", query=expr)  # parses (HTTP 400 otherwise)
            result = server.query_range(expr, start, end)
            assert any(s["values"] for s in result), f"panel {panel['title']!r}: no data for {expr}"
            results.append((target["legendFormat"], result))
        drawn.append((panel, results))
    png = render.draw(drawn, tmp_path / "dashboard.png",
                      f"dashboards/kubetrain.json — TrainingJob {JOB}, scraped by Prometheus from a local run")
    assert png.stat().st_size > 20_000
    if os.environ.get("KUBETRAIN_UPDATE_DOCS") == "1":
        shutil.copy(png, REPO / "docs" / "img" / "dashboard.png")
