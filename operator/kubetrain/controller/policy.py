"""The opt-in pass-through policy: what a TrainingJob may hand its worker pods.

Whoever may create a TrainingJob may otherwise make the operator create pods that run as any
ServiceAccount of the namespace (its token mounted), read any Secret of it (`envFrom`,
`env[].valueFrom.secretKeyRef`, `secret` and projected secret volumes) and mount `hostPath`
volumes. With the policy on, those are limited to allow-lists set by the cluster admin (the
chart's `admissionPolicy` values, passed as `kubetrain operator --enforce-policy
--allowed-service-account NAME --allowed-secret NAME [--allow-host-path]`).

The same lists are enforced twice: at admission by the chart's ValidatingAdmissionPolicy
(charts/kubetrain/templates/admission-policy.yaml, same messages), and here, for jobs that
predate the policy or a cluster without it: a violating job fails with reason PolicyViolation
before any child is created. Every message names the field and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kubetrain import api

ANY = "*"  # in an allow-list: every name
WHO_FIXES = "the cluster admin widens the chart value admissionPolicy.{values}"


def _allowed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) if names else "none"


@dataclass(frozen=True)
class Policy:
    service_accounts: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    host_path: bool = False

    @classmethod
    def of(cls, service_accounts: Iterable[str] = (), secrets: Iterable[str] = (), host_path: bool = False) -> Policy:
        return cls(frozenset(service_accounts), frozenset(secrets), host_path)

    def _ok(self, allowed: frozenset[str], name: Any) -> bool:
        return ANY in allowed or (isinstance(name, str) and name in allowed)

    def violations(self, spec: api.TrainingJobSpec) -> list[str]:
        """What `spec` asks for beyond the allow-lists, one message per offending field."""
        w = spec.workers
        out: list[str] = []
        if w.service_account_name is not None and not self._ok(self.service_accounts, w.service_account_name):
            out.append(
                f"spec.workers.serviceAccountName {w.service_account_name!r} is not allowed (allowed: "
                f"{_allowed(self.service_accounts)}): remove it to run as the namespace default "
                f"ServiceAccount or name an allowed one; "
                + WHO_FIXES.format(values="serviceAccountNames"))
        for path, name in _secret_refs(w):
            if not self._ok(self.secrets, name):
                out.append(
                    f"{path} names Secret {name!r}, which is not allowed (allowed: {_allowed(self.secrets)}): "
                    f"remove it or use an allowed Secret; " + WHO_FIXES.format(values="secretNames"))
        if not self.host_path:
            for i, volume in enumerate(w.volumes or []):
                if isinstance(volume, dict) and "hostPath" in volume:
                    out.append(
                        f"spec.workers.volumes[{i}].hostPath is not allowed: use a PersistentVolumeClaim "
                        f"or an emptyDir; " + WHO_FIXES.format(values="allowHostPath"))
        return out


def _secret_refs(w: api.WorkersSpec) -> Iterator[tuple[str, Any]]:
    """(field path, Secret name) of every Secret the worker pods would read."""
    for i, source in enumerate(w.env_from or []):
        ref = source.get("secretRef") if isinstance(source, dict) else None
        if isinstance(ref, dict):
            yield f"spec.workers.envFrom[{i}].secretRef.name", ref.get("name")
    for i, var in enumerate(w.env or []):
        value_from = var.get("valueFrom") if isinstance(var, dict) else None
        ref = value_from.get("secretKeyRef") if isinstance(value_from, dict) else None
        if isinstance(ref, dict):
            yield f"spec.workers.env[{i}].valueFrom.secretKeyRef.name", ref.get("name")
    for i, volume in enumerate(w.volumes or []):
        if not isinstance(volume, dict):
            continue
        secret = volume.get("secret")
        if isinstance(secret, dict):
            yield f"spec.workers.volumes[{i}].secret.secretName", secret.get("secretName")
        projected = volume.get("projected")
        sources = projected.get("sources") if isinstance(projected, dict) else None
        for j, src in enumerate(sources if isinstance(sources, list) else []):
            ref = src.get("secret") if isinstance(src, dict) else None
            if isinstance(ref, dict):
                yield f"spec.workers.volumes[{i}].projected.sources[{j}].secret.name", ref.get("name")
