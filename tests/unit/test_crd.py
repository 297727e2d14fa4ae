"""The CRD is derived from the models, structural, and the committed copy never drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubetrain import api
from kubetrain.api.crd import build_crd, crd_yaml

REPO = Path(__file__).resolve().parents[2]


def _nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for k, v in schema.get("properties", {}).items():
            out += _nodes(v, f"{path}.{k}")
        if isinstance(schema.get("items"), dict):
            out += _nodes(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            out += _nodes(schema["additionalProperties"], f"{path}{{}}")
    return out


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_generated() -> None:
    committed = (REPO / "manifests" / "crd.yaml").read_text()
    assert committed == crd_yaml(), "manifests/crd.yaml drifted: run `kubetrain crd > manifests/crd.yaml`"


def test_chart_crd_matches_generated() -> None:
    chart_crd = REPO / "charts" / "kubetrain" / "crds" / "trainingjobs.yaml"
    assert chart_crd.is_file(), "the chart ships the CRD in crds/"
    assert yaml.safe_load(chart_crd.read_text()) == build_crd()


def test_identity_and_subresources() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "trainingjobs.kubetrain.dev"
    assert spec["group"] == "kubetrain.dev"
    assert spec["names"]["kind"] == "TrainingJob"
    assert spec["names"]["shortNames"] == ["tj"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.workers.replicas",
        "statusReplicasPath": ".status.workers.active",
        "labelSelectorPath": ".status.selector",
    }
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols == ["Phase", "Ready", "Desired", "Step", "Loss", "Admission", "Age"]


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
        assert "default" not in node, f"{path}: no server-side defaults"
        assert node.get("type") != "null", path
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
            raise AssertionError(f"{path}: exclusiveMinimum must be boolean in OpenAPI v3.0")
        if node is not _schema() and path:
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: every node typed"
        if "properties" in node:
            assert node.get("type") == "object", path


def test_unknown_fields_preserved_only_where_meant() -> None:
    preserved = sorted(p for p, n in _nodes(_schema()) if n.get("x-kubernetes-preserve-unknown-fields"))
    assert preserved == sorted([
        ".spec.deepspeed",
        ".spec.lrSchedule.params",
        ".spec.model.entrypointArgs",
        ".spec.workers.affinity",
        ".spec.workers.env[]",
        ".spec.workers.envFrom[]",
        ".spec.workers.imagePullSecrets[]",
        ".spec.workers.tolerations[]",
        ".spec.workers.volumeMounts[]",
        ".spec.workers.volumes[]",
    ])
    int_or_string = sorted(p for p, n in _nodes(_schema()) if n.get("x-kubernetes-int-or-string"))
    assert int_or_string == [".spec.workers.resources.limits{}", ".spec.workers.resources.requests{}"]


def test_lists_are_bounded() -> None:
    for path, node in _nodes(_schema()):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: lists need maxItems to bound CEL cost"


def test_every_field_has_description_with_default() -> None:
    for path, node in _nodes(_schema()["properties"]["spec"]):
        if path and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
    for name, field in api.WorkersSpec.model_fields.items():
        desc = field.description or ""
        assert field.is_required() or "Default" in desc or field.default is not None, name


def test_cel_rules_present() -> None:
    text = json.dumps(_schema())
    for fragment in (
        "self.minReplicas <= self.replicas",
        "self.replicas <= self.maxReplicas",
        "self.globalBatchSize % self.microBatchSize == 0",
        "oldSelf.model",
        "oldSelf.parallelism.strategy",
        "oldSelf.precision",
    ):
        assert fragment in text, fragment
    # replicas itself must stay mutable: no transition rule mentions it.
    for _, node in _nodes(_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert "oldSelf.workers" not in rule["rule"]


def test_field_reference_matches_models() -> None:
    from kubetrain.tools.fieldref import render

    committed = (REPO / "docs" / "fields.md").read_text()
    assert committed == render(), "docs/fields.md drifted: run `python -m kubetrain.tools.fieldref > docs/fields.md`"
