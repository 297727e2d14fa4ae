"""Derive the TrainingJob CustomResourceDefinition from the pydantic models.

The models' JSON schema is rewritten into a Kubernetes *structural* schema: `$ref`s
inlined, `Optional` unwrapped (no `anyOf` with null), `exclusiveMinimum` in the
OpenAPI v3.0 boolean form, no defaults (see `kubetrain.api`), the default written
into each description instead, and each model's CEL rules attached as
`x-kubernetes-validations`.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import yaml
from pydantic import BaseModel

from kubetrain import api
from kubetrain.api.constants import GROUP, KIND, PLURAL, VERSION
from kubetrain.api.modelsize import DEFAULT_PRESET, PRESETS
from kubetrain.api.pipeline import cel_rules as pipeline_rules
from kubetrain.api.tensorparallel import PROCS
from kubetrain.api.tensorparallel import cel_rules as tensor_parallel_rules

_DROP = {"title", "default", "discriminator"}


def _model_registry() -> dict[str, type[api.ApiModel]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(api, inspect.isclass)
        if issubclass(cls, api.ApiModel) and cls is not api.ApiModel
    }


def _preset_or(field: str, key: str) -> str:
    """CEL for a model size as the trainer resolves it: the field, else the preset's value."""
    expr = str(PRESETS[DEFAULT_PRESET][key])
    for name, sizes in PRESETS.items():
        if name != DEFAULT_PRESET:
            expr = f"(has(self.preset) && self.preset == '{name}' ? {sizes[key]} : {expr})"
    return f"(has(self.{field}) ? self.{field} : {expr})"


_D_MODEL, _N_HEADS = _preset_or("dModel", "d_model"), _preset_or("nHeads", "n_heads")

# Rules written from tables outside the models (the models cannot import modelsize: it imports them).
DERIVED_RULES: dict[str, tuple[api.CelRule, ...]] = {
    "ModelSpec": (
        api.CelRule(  # the trainer's attention splits dModel into nHeads heads
            rule=f"has(self.entrypoint) || {_D_MODEL} % {_N_HEADS} == 0",
            # (no messageExpression with the values: the API server prices string(int) as unbounded)
            message="dModel must be divisible by nHeads (the preset's value where one is not given): "
            "choose dModel a multiple of nHeads",
            field_path=".dModel",
        ),
    ),
    # tensorParallel divides procs, heads, vocabulary; pipelineParallel x tensorParallel the world size
    "TrainingJobSpec": (*tensor_parallel_rules(), *pipeline_rules(PROCS)),
}


def _rules_of(cls: type[api.ApiModel]) -> list[dict[str, str]]:
    out = []
    for r in (*cls.cel_rules, *DERIVED_RULES.get(cls.__name__, ())):
        item = {"rule": r.rule, "message": r.message}
        if r.field_path and not (cls is api.TrainingJob and r.field_path.startswith(".metadata")):
            # (the API server takes no fieldPath into metadata: the schema declares none of its fields)
            item["fieldPath"] = r.field_path
        if r.reason:
            item["reason"] = r.reason
        out.append(item)
    return out


class _Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.models = _model_registry()

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            return self._merge(self.convert(self.defs[name]), node, name)
        for key in ("anyOf", "oneOf", "allOf"):
            if key in node:
                options = [o for o in node.pop(key) if o.get("type") != "null"]
                if len(options) == 1:
                    return self._merge(self.convert(options[0]), node)
                # int | str is the only union the contract uses: a resource quantity.
                types = sorted(o.get("type", "") for o in options)
                if types != ["integer", "string"]:
                    raise ValueError(f"unsupported union in CRD schema: {options}")
                return self._merge({"x-kubernetes-int-or-string": True}, node)
        return self._plain(node)

    def _merge(self, inner: dict[str, Any], outer: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        extra = self._plain(outer, keep_type=False)
        merged = {**inner, **{k: v for k, v in extra.items() if k != "x-kubernetes-validations"}}
        if "description" in outer and "description" in inner:
            merged["description"] = extra["description"]
        if model and model in self.models:
            rules = _rules_of(self.models[model])
            if rules:
                merged["x-kubernetes-validations"] = rules
        return merged

    def _plain(self, node: dict[str, Any], keep_type: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        default = node.get("default")
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "properties":
                out["properties"] = {k: self.convert(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "additionalProperties":
                if isinstance(value, dict) and value:
                    converted = self.convert(value)
                    out["additionalProperties"] = converted
                    if converted.get("x-kubernetes-int-or-string"):
                        out["additionalProperties"] = {"x-kubernetes-int-or-string": True}
            elif key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "const":
                out["enum"] = [value]
            else:
                out[key] = value
        if out.get("x-kubernetes-preserve-unknown-fields"):
            out["type"] = "object"
            out.pop("additionalProperties", None)
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        if default is not None and default != [] and default != {}:
            desc = out.get("description", "")
            if "Default:" not in desc:
                out["description"] = f"{desc} Default: {json.dumps(default)}.".strip()
        if not keep_type:
            out.pop("type", None)
        return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model, CEL rules included."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.get("$defs", {}))
    root = {k: v for k, v in raw.items() if k != "$defs"}
    schema = converter.convert(root)
    rules = _rules_of(model) if issubclass(model, api.ApiModel) else []
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def crd_schema() -> dict[str, Any]:
    spec = structural_schema(api.TrainingJobSpec)
    status = structural_schema(api.TrainingJobStatus)
    spec["description"] = "What to train and how. Every field is optional; defaults are documented per field."
    status["description"] = "Observed state, written by the operator through the status subresource."
    return {
        "type": "object",
        "description": "A distributed PyTorch training job.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        # metadata.name: the API server checks a DNS subdomain; the job needs a short DNS label
        "x-kubernetes-validations": _rules_of(api.TrainingJob),
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.workers.ready"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.workers.desired"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    # Why a job is held or was let go: Queued, Admitted, Preempted, Evicted (Kueue, docs/kueue.md),
    # Suspended/Resumed (runPolicy.suspend); empty for a job that never was.
    {"name": "Admission", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Suspended")].reason'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of TrainingJob."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubetrain"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "trainingjob",
                "shortNames": ["tj"],
                "categories": ["kubetrain"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": crd_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers.replicas",
                            "statusReplicasPath": ".status.workers.active",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `kubetrain crd` from kubetrain.api. Do not edit: change the models.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
