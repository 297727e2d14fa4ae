"""Generate the field reference (docs/fields.md) from the CRD schema, i.e. from the models.

Run `python -m kubetrain.tools.fieldref > docs/fields.md`; a unit test fails when it drifts.
"""

from __future__ import annotations

import sys
from typing import Any

from kubetrain.api.crd import crd_schema


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = node.get("type", "object")
    if kind == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_of(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return str(kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    if "minimum" in node:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {node['minimum']}")
    if "maximum" in node:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {node['maximum']}")
    if "maxItems" in node:
        parts.append(f"≤ {node['maxItems']} items")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    return ", ".join(parts)


def rows(node: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        desc = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        out.append(f"| `{here}` | {_type_of(sub)} | {_bounds(sub)} | {desc} |")
        out += rows(sub, here)
    return out


def rules(node: dict[str, Any], path: str) -> list[str]:
    out = [f"- `{path}{r.get('fieldPath', '')}`: {r['message']}" for r in node.get("x-kubernetes-validations", [])]
    for name, sub in node.get("properties", {}).items():
        out += rules(sub, f"{path}.{name}")
    return out


def render() -> str:
    schema = crd_schema()
    lines = [
        "# TrainingJob field reference",
        "",
        "Generated from `kubetrain.api` by `python -m kubetrain.tools.fieldref`; do not edit by hand.",
        "Every field is optional unless marked required; the default is in its description.",
        "",
        "## spec",
        "",
        "| field | type | bounds | description |",
        "|---|---|---|---|",
        *rows(schema["properties"]["spec"], "spec"),
        "",
        "## Rules checked at `kubectl apply` (CEL) and by `kubetrain validate`",
        "",
        *rules(schema["properties"]["spec"], "spec"),
        "",
        "## status",
        "",
        "| field | type | bounds | description |",
        "|---|---|---|---|",
        *rows(schema["properties"]["status"], "status"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
