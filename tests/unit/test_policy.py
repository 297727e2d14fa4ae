"""The pass-through policy in the operator (controller/policy.py): a job naming a ServiceAccount
or Secret outside the allow-lists, or mounting hostPath, fails with reason PolicyViolation and
gets no child; the same lists as the chart's ValidatingAdmissionPolicy (tests/cluster/test_security.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kubetrain import api
from kubetrain.cli import build_parser
from kubetrain.controller.observed import Observed
from kubetrain.controller.policy import Policy
from kubetrain.controller.reconcile import R_POLICY_VIOLATION, Create, Job, Settings, reconcile

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
POLICY = Policy.of(service_accounts=["trainer"], secrets=["hf-token", "wandb"])


def spec(**workers: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate({"workers": {"replicas": 2, **workers}})


def job(workers: dict[str, Any], status: dict[str, Any] | None = None) -> Job:
    obj = {"metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1", "generation": 1},
           "spec": {"workers": {"replicas": 2, **workers}}, "status": status or {}}
    return Job.from_object(obj)


ALLOWED: list[dict[str, Any]] = [
    {},
    {"serviceAccountName": "trainer"},
    {"envFrom": [{"secretRef": {"name": "hf-token"}}, {"configMapRef": {"name": "anything"}}]},
    {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "k"}}},
             {"name": "B", "value": "plain"}, {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}]},
    {"volumes": [{"name": "s", "secret": {"secretName": "wandb"}}, {"name": "e", "emptyDir": {}},
                 {"name": "p", "projected": {"sources": [{"secret": {"name": "hf-token"}},
                                                         {"configMap": {"name": "c"}}]}}]},
]


@pytest.mark.parametrize("workers", ALLOWED, ids=[str(i) for i in range(len(ALLOWED))])
def test_what_the_allow_lists_allow_passes(workers: dict[str, Any]) -> None:
    assert POLICY.violations(spec(**workers)) == []


DENIED: list[tuple[dict[str, Any], str]] = [
    ({"serviceAccountName": "cluster-admin-sa"}, "spec.workers.serviceAccountName 'cluster-admin-sa' is not allowed"),
    ({"envFrom": [{"secretRef": {"name": "db-password"}}]}, "spec.workers.envFrom[0].secretRef.name names Secret 'db-password'"),
    ({"envFrom": [{"secretRef": {}}]}, "spec.workers.envFrom[0].secretRef.name names Secret None"),
    ({"env": [{"name": "X", "value": "1"}, {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]},
     "spec.workers.env[1].valueFrom.secretKeyRef.name names Secret 'db'"),
    ({"volumes": [{"name": "s", "secret": {"secretName": "tls"}}]}, "spec.workers.volumes[0].secret.secretName names Secret 'tls'"),
    ({"volumes": [{"name": "p", "projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "tls"}}]}}]},
     "spec.workers.volumes[0].projected.sources[1].secret.name names Secret 'tls'"),
    ({"volumes": [{"name": "e", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/"}}]},
     "spec.workers.volumes[1].hostPath is not allowed"),
]


@pytest.mark.parametrize(("workers", "message"), DENIED, ids=[m.split()[0] for _, m in DENIED])
def test_each_violation_names_the_field_and_the_fix(workers: dict[str, Any], message: str) -> None:
    (violation,) = POLICY.violations(spec(**workers))
    assert violation.startswith(message)
    assert "the cluster admin widens the chart value admissionPolicy." in violation
    assert any(fix in violation for fix in ("remove it", "use a PersistentVolumeClaim"))


def test_a_wildcard_and_allow_host_path_open_each_list() -> None:
    workers = {"serviceAccountName": "x", "envFrom": [{"secretRef": {"name": "y"}}],
               "volumes": [{"name": "h", "hostPath": {"path": "/data"}}]}
    assert len(Policy.of().violations(spec(**workers))) == 3
    assert Policy.of(["*"], ["*"], host_path=True).violations(spec(**workers)) == []
    assert [v.split()[0] for v in Policy.of(["*"]).violations(spec(**workers))] == [
        "spec.workers.envFrom[0].secretRef.name", "spec.workers.volumes[0].hostPath"]


def test_the_operator_fails_a_violating_job_and_creates_nothing() -> None:
    settings = Settings(trainer_image="trainer:test", policy=POLICY)
    d = reconcile(job({"serviceAccountName": "root-ish"}), Observed(), T0, settings)
    assert d.status.phase == "Failed"
    failed = next(c for c in d.status.conditions or [] if c.type == "Failed")
    assert failed.status == "True" and failed.reason == R_POLICY_VIOLATION
    assert "spec.workers.serviceAccountName 'root-ish'" in failed.message
    assert not [a for a in d.actions if isinstance(a, Create)], "no Service, ConfigMap or pod for a denied job"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", R_POLICY_VIOLATION)]


def test_without_the_policy_or_within_it_the_job_runs() -> None:
    for settings, workers in [(Settings(trainer_image="t"), {"serviceAccountName": "root-ish"}),
                              (Settings(trainer_image="t", policy=POLICY), {"serviceAccountName": "trainer"})]:
        d = reconcile(job(workers), Observed(), T0, settings)
        assert d.status.phase == "Pending" and len(d.pods_to_create) == 2


def test_a_finished_job_is_left_alone() -> None:
    done = {"phase": "Succeeded", "completionTime": "2026-03-01T11:00:00Z"}
    d = reconcile(job({"serviceAccountName": "root-ish"}, done), Observed(), T0,
                  Settings(trainer_image="t", policy=POLICY))
    assert d.status.phase == "Succeeded" and not d.events


def test_the_operator_flags_build_the_policy() -> None:
    args = build_parser("operator").parse_args(
        ["operator", "-A", "--enforce-policy", "--allowed-service-account", "trainer",
         "--allowed-secret", "hf-token", "--allowed-secret", "wandb"])
    assert Policy.of(args.allowed_service_account, args.allowed_secret, args.allow_host_path) == POLICY
    assert args.enforce_policy
    assert not build_parser("operator").parse_args(["operator", "-A"]).enforce_policy
