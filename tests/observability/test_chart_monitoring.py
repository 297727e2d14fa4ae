"""The chart's monitoring objects and values.schema.json: helm lint/template, wrong values named
by their path, every optional object (and manifests/monitoring) accepted by the test API server
(`kubectl apply --dry-run=server`) with the Prometheus Operator's own CRDs installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import Cluster, wait_for
from tests.observability.conftest import ALL_ON, CHART, RELEASE_NS, REPO, docs, helm_template, rule_groups

MONITORING = REPO / "manifests" / "monitoring"
FETCH = Path(__file__).resolve().parent / "fetch-crds.sh"
OPTIONAL = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"}


def test_values_schema_covers_every_value() -> None:
    """Every key of values.yaml is in the schema (no additionalProperties left to chance)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v: Any, s: dict[str, Any], path: str) -> None:
        if not isinstance(v, dict) or s.get("type") != "object" or "properties" not in s:
            return
        assert s.get("additionalProperties") is False, f"{path or '.'}: the schema must refuse unknown keys"
        for key, sub in v.items():
            assert key in s["properties"], f"values.yaml key {path}{key} is missing from values.schema.json"
            walk(sub, s["properties"][key], f"{path}{key}.")

    walk(values, schema, "")


def test_dashboard_copies_are_generated() -> None:
    out = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_helm_lint_with_everything_on(helm: str) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    for s in ALL_ON:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_defaults_render_no_monitoring_object(helm: str) -> None:
    kinds = {d["kind"] for d in docs(helm_template(helm).stdout)}
    assert not kinds & (OPTIONAL | {"ConfigMap", "Service"}), kinds


def test_every_optional_object_renders(rendered_all: list[dict[str, Any]]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in rendered_all:
        by_kind.setdefault(d["kind"], []).append(d)
    assert OPTIONAL | {"ConfigMap", "Service"} <= set(by_kind)
    dash = by_kind["ConfigMap"][0]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["kubetrain.json"]) == json.loads((REPO / "dashboards" / "kubetrain.json").read_text())
    sm = by_kind["ServiceMonitor"][0]["spec"]
    assert sm["endpoints"][0]["honorLabels"] is True and sm["endpoints"][0]["port"] == "metrics"
    svc = by_kind["Service"][0]["spec"]
    deploy = next(d for d in rendered_all if d["kind"] == "Deployment")
    assert svc["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    pm = by_kind["PodMonitor"][0]["spec"]
    assert pm["selector"]["matchLabels"] == {"kubetrain.dev/role": "worker"} and pm["namespaceSelector"] == {"any": True}
    netpol = by_kind["NetworkPolicy"][0]
    assert netpol["metadata"]["namespace"] == RELEASE_NS  # default: the release namespace
    ingress = netpol["spec"]["ingress"]
    assert ingress[0] == {"from": [{"podSelector": {"matchLabels": {"kubetrain.dev/role": "worker"}}}]}
    assert ingress[2]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_network_policy_per_job_namespace(helm: str) -> None:
    out = helm_template(helm, "networkPolicy.enabled=true", "networkPolicy.namespaces={team-a,team-b}")
    pols = [d for d in docs(out.stdout) if d["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["namespace"] for p in pols] == ["team-a", "team-b"]
    out = helm_template(helm, "networkPolicy.enabled=true", "watchNamespaces={ml}")
    assert [d["metadata"]["namespace"] for d in docs(out.stdout) if d["kind"] == "NetworkPolicy"] == ["ml"]


@pytest.mark.parametrize(("setting", "path"), [
    ("metrics.port=http", "at '/metrics/port': got string, want integer"),
    ("prometheusRule.stalledMinutes=soon", "at '/prometheusRule/stalledMinutes': got string, want integer"),
    ("serviceMonitor.interval=30", "at '/serviceMonitor/interval': got number, want string"),
    ("serviceMonitor.enable=true", "at '/serviceMonitor': additional properties 'enable' not allowed"),  # a typo
    ("grafanaDashboard.enabled=yes please", "at '/grafanaDashboard/enabled': got string, want boolean"),
    ("networkPolicy.metricsNamespace=Not_A_Name", "at '/networkPolicy/metricsNamespace': 'Not_A_Name' does not match"),
    ("logFormat=xml", "at '/logFormat': value must be one of 'json', 'plain', 'full'"),
])
def test_wrong_values_fail_with_their_path(helm: str, setting: str, path: str) -> None:
    out = helm_template(helm, setting, check=False)
    assert out.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert path in out.stderr, out.stderr


@pytest.mark.cluster
def test_kustomize_monitoring_matches_the_chart(cluster: Cluster, rendered_all: list[dict[str, Any]]) -> None:
    objects = docs(cluster.kubectl("kustomize", str(MONITORING)).stdout)
    kinds = sorted(d["kind"] for d in objects)
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule", "Service", "ServiceMonitor"]
    assert {d["metadata"]["namespace"] for d in objects} == {RELEASE_NS}
    assert rule_groups(objects) == rule_groups(rendered_all), (
        "manifests/monitoring/prometheusrule.yaml differs from the chart's PrometheusRule with default values")
    chart = {d["kind"]: d for d in rendered_all}
    for kind in ("PodMonitor", "ServiceMonitor"):
        mine = next(d for d in objects if d["kind"] == kind)
        assert mine["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"] == \
            chart[kind]["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    dash = next(d for d in objects if d["kind"] == "ConfigMap")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["kubetrain.json"]) == json.loads((REPO / "dashboards" / "kubetrain.json").read_text())
    # manifests/deployment.yaml's pods carry only app.kubernetes.io/name (no Helm instance label)
    pod_labels = yaml.safe_load_all((REPO / "manifests" / "deployment.yaml").read_text())
    deploy = next(d for d in pod_labels if d and d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = next(d for d in objects if d["kind"] == "Service")
    assert service["spec"]["selector"].items() <= deploy.items()
    netpol = yaml.safe_load((MONITORING / "networkpolicy.yaml").read_text())
    ours, theirs = netpol["spec"]["ingress"], chart["NetworkPolicy"]["spec"]["ingress"]
    assert (ours[0], ours[2]) == (theirs[0], theirs[2])
    assert ours[1]["from"][0]["podSelector"]["matchLabels"].items() <= deploy.items()
    assert ours[1]["ports"] == theirs[1]["ports"]


@pytest.fixture(scope="module")
def prometheus_operator_crds(cluster: Cluster) -> list[str]:
    """The Prometheus Operator's real CRDs (its Go module, fetched by fetch-crds.sh), installed."""
    out = subprocess.run(["bash", str(FETCH)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"Prometheus Operator CRDs unavailable: {out.stderr.strip()[-300:]}")
    crd_dir = Path(out.stdout.strip().splitlines()[-1])
    names = []
    for kind in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                        str(crd_dir / f"monitoring.coreos.com_{kind}.yaml"))
        names.append(f"{kind}.monitoring.coreos.com")
    cluster.wait_established(*names)
    wait_for(lambda: cluster.kubectl("get", "servicemonitors", "-A", check=False).returncode == 0, 30,
             "servicemonitors to be served")
    cluster.kubectl("create", "namespace", RELEASE_NS, check=False)
    return names


def dry_run(cluster: Cluster, path: Path) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)


@pytest.mark.cluster
def test_every_optional_object_passes_the_api_server(cluster: Cluster, prometheus_operator_crds: list[str],
                                                     rendered_all: list[dict[str, Any]], tmp_path: Path) -> None:
    optional = [d for d in rendered_all if d["kind"] in OPTIONAL | {"ConfigMap", "Service"}]
    assert {d["kind"] for d in optional} == OPTIONAL | {"ConfigMap", "Service"}
    path = tmp_path / "optional.yaml"
    path.write_text(yaml.safe_dump_all(optional))
    out = dry_run(cluster, path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("(server dry run)") == len(optional), out.stdout
    # the server really validates: a wrong field type in a PrometheusRule is refused
    bad = json.loads(json.dumps(next(d for d in optional if d["kind"] == "PrometheusRule")))
    bad["spec"]["groups"][0]["rules"][0]["for"] = 5
    path.write_text(yaml.safe_dump(bad))
    out = dry_run(cluster, path)
    assert out.returncode != 0 and "spec.groups[0].rules[0].for" in out.stderr, out.stderr


@pytest.mark.cluster
def test_kustomize_monitoring_passes_the_api_server(cluster: Cluster, prometheus_operator_crds: list[str],
                                                    namespace: str, tmp_path: Path) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(cluster.kubectl("kustomize", str(MONITORING)).stdout)
    out = dry_run(cluster, path)
    assert out.returncode == 0, out.stdout + out.stderr
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(MONITORING / "networkpolicy.yaml"),
                          check=False)
    assert out.returncode == 0, out.stdout + out.stderr
