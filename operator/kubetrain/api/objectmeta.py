"""What the API server checks of a TrainingJob's `metadata` before the CRD's schema sees it.

The API server decodes `metadata` into its own ObjectMeta and validates it itself (the CRD can only
add rules about the name). `kubetrain validate` repeats the checks a user can trip over: the name
(kubectl needs one; the job needs a short DNS-1123 label, `models.JOB_NAME_RULE`), unknown or
mistyped metadata fields, and label and annotation syntax.
"""

from __future__ import annotations

import re
from typing import Any

from kubetrain.api.models import JOB_NAME_RULE, job_name_problem
from kubetrain.api.problems import Problem

# ObjectMeta's JSON fields (strict field validation refuses others)
_STRING_FIELDS = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "creationTimestamp",
                  "deletionTimestamp"}
_OTHER_FIELDS = {"generation", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
                 "finalizers", "managedFields"}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
ANNOTATIONS_MAX_BYTES = 256 * 1024


def _qualified_name_problem(key: str) -> str | None:
    """Kubernetes' IsQualifiedName: [prefix/]name, prefix a DNS subdomain, name <= 63 characters."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "has a prefix that is not a DNS subdomain"
    if not name or len(name) > 63 or not _NAME_PART.fullmatch(name):
        return "must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending alphanumeric"
    return None


def _string_map_problems(meta: dict[str, Any], field: str) -> list[Problem]:
    value = meta.get(field)
    if value is None:
        return []
    if not isinstance(value, dict):
        return [Problem(f"metadata.{field}", "must be an object of strings", f"write {field} as key: value lines")]
    problems = []
    for key, item in value.items():
        path = f"metadata.{field}[{key[:80]!r}]"
        if not isinstance(item, str):
            problems.append(Problem(path, f"must be a string (got {type(item).__name__})", "quote the value"))
            continue
        why = _qualified_name_problem(key)
        if why:
            problems.append(Problem(path, f"the key {why}", f"fix the {field[:-1]} key"))
        if field == "labels" and (len(item) > 63 or (item and not _NAME_PART.fullmatch(item))):
            problems.append(Problem(path, "a label value must be at most 63 letters, digits, '-', '_' or '.', "
                                    "starting and ending alphanumeric", "shorten or fix the value"))
    if field == "annotations" and not problems:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > ANNOTATIONS_MAX_BYTES:
            problems.append(Problem("metadata.annotations", f"total {size} bytes, more than {ANNOTATIONS_MAX_BYTES}",
                                    "move large values into the spec or a ConfigMap"))
    return problems


def metadata_problems(obj: dict[str, Any]) -> list[Problem]:
    """Problems of obj['metadata'] that the API server (or kubectl) refuses, one per line."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [Problem("metadata", "is required and must be an object", "add metadata: {name: my-job}")]
    problems = []
    for key, value in meta.items():
        if key in _STRING_FIELDS and not isinstance(value, str):
            problems.append(Problem(f"metadata.{key}", f"must be a string (got {type(value).__name__})", "quote it"))
        elif key not in _STRING_FIELDS | _OTHER_FIELDS:
            problems.append(Problem(f"metadata.{key}", f"unknown field '{str(key)[:80]}'",
                                    "remove it (metadata takes name, namespace, labels, annotations...)"))
    if "name" not in meta:
        problems.append(Problem("metadata.name", "is required", "add metadata.name"))
    elif isinstance(meta["name"], str) and job_name_problem(meta["name"]):
        what, _, fix = JOB_NAME_RULE.message.partition(": ")
        problems.append(Problem("metadata.name", what, fix))
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and (len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace)):
        problems.append(Problem("metadata.namespace", "must be a DNS-1123 label of at most 63 characters",
                                "use the namespace's name"))
    return problems + _string_map_problems(meta, "labels") + _string_map_problems(meta, "annotations")
