"""The Helm chart installs the same CRD, RBAC and operator settings as manifests/."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.api.crd import build_crd
from tests.cluster import binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetrain"


def _manifest(kind: str) -> dict[str, Any]:
    for path in (REPO / "manifests").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} in manifests/")


def test_chart_crd_is_the_generated_crd() -> None:
    assert yaml.safe_load((CHART / "crds" / "trainingjobs.yaml").read_text()) == build_crd(), (
        "copy manifests/crd.yaml to charts/kubetrain/crds/trainingjobs.yaml"
    )


def test_chart_rbac_rules_equal_manifests() -> None:
    rules = yaml.safe_load((CHART / "files" / "clusterrole-rules.yaml").read_text())
    assert rules == _manifest("ClusterRole")["rules"], "regenerate charts/kubetrain/files/clusterrole-rules.yaml"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = binaries.find("helm")
    if helm is None:
        pytest.skip("helm not built: run `bash tests/cluster/build.sh`")
    lint = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [str(helm), "template", "kt", str(CHART), "--namespace", "kubetrain-system", "--include-crds"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_template_renders_everything(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
         "PodDisruptionBudget"]
    )
    role = next(d for d in rendered if d["kind"] == "ClusterRole")
    assert role["rules"] == _manifest("ClusterRole")["rules"]
    crd = next(d for d in rendered if d["kind"] == "CustomResourceDefinition")
    assert crd == build_crd()


def test_helm_deployment_matches_manifest(rendered: list[dict[str, Any]]) -> None:
    chart = next(d for d in rendered if d["kind"] == "Deployment")["spec"]
    plain = _manifest("Deployment")["spec"]
    # Two replicas, one leader (a Lease), rolled one at a time; a PDB keeps one through drains.
    assert chart["replicas"] == plain["replicas"] == 2
    assert chart["strategy"] == plain["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pdb = next(d for d in rendered if d["kind"] == "PodDisruptionBudget")["spec"]
    assert pdb == {**_manifest("PodDisruptionBudget")["spec"], "selector": pdb["selector"]}
    assert pdb["selector"]["matchLabels"].items() <= chart["template"]["metadata"]["labels"].items()
    pod, plain_pod = chart["template"]["spec"], plain["template"]["spec"]
    assert pod["securityContext"] == plain_pod["securityContext"]
    c, pc = pod["containers"][0], plain_pod["containers"][0]
    assert c["securityContext"] == pc["securityContext"]
    assert c["args"] == pc["args"]
    assert {p["name"] for p in c["ports"]} == {p["name"] for p in pc["ports"]}
    assert c["livenessProbe"] == pc["livenessProbe"]
