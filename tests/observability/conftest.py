"""Fixtures of the observability tier: the cluster tier's control plane (when a test needs one),
helm and promtool, the chart rendered with every monitoring object on."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import binaries
from tests.cluster import conftest as cluster_tier
from tests.cluster.helpers import Cluster
from tests.observability import prom

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetrain"
RELEASE, RELEASE_NS = "kubetrain", "kubetrain-system"
ALL_ON = ("serviceMonitor.enabled=true", "podMonitor.enabled=true", "prometheusRule.enabled=true",
          "grafanaDashboard.enabled=true", "networkPolicy.enabled=true")
_timings: dict[str, float] = {}

namespace = cluster_tier.namespace
trainingjob_crd = cluster_tier.trainingjob_crd


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with cluster_tier.control_plane(_timings) as running:
        yield running


def _tool(name: str) -> str:
    try:
        return prom.binary(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _tool("prometheus")


@pytest.fixture(scope="session")
def helm() -> str:
    path = binaries.find("helm")
    if path is None:
        pytest.skip("helm not built: run `bash tests/cluster/build.sh`")
    return str(path)


def helm_template(helm: str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NS]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=check,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/kubetrain-helm-cache"})


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def rendered_all(helm: str) -> list[dict[str, Any]]:
    """The chart with every monitoring object on (defaults otherwise)."""
    return docs(helm_template(helm, *ALL_ON).stdout)


def rule_groups(objects: list[dict[str, Any]]) -> dict[str, Any]:
    rule = next(d for d in objects if d["kind"] == "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}
