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


def _manifest(kind: str, name: str | None = None) -> dict[str, Any]:
    name = name or ("kubetrain-operator" if kind == "ClusterRole" else None)
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and name in (None, doc["metadata"]["name"]):
                return doc
    raise AssertionError(f"no {kind} {name or ''} in manifests/")


def _rules(part: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((CHART / "files" / f"rbac-{part}-rules.yaml").read_text()))


def test_chart_crd_is_the_generated_crd() -> None:
    assert yaml.safe_load((CHART / "crds" / "trainingjobs.yaml").read_text()) == build_crd(), (
        "copy manifests/crd.yaml to charts/kubetrain/crds/trainingjobs.yaml"
    )


def test_chart_rbac_rules_equal_manifests() -> None:
    """The chart's rule files are manifests/rbac.yaml's ClusterRole split by scope, in order."""
    rules = _rules("namespaced") + _rules("cluster") + _rules("lease")
    assert rules == _manifest("ClusterRole")["rules"], "regenerate charts/kubetrain/files/rbac-*-rules.yaml"
    cluster_scoped = {"resourceflavors", "priorityclasses"}  # the only cluster-scoped kinds the operator reads
    assert {r for rule in _rules("cluster") for r in rule["resources"]} == cluster_scoped
    assert all(rule["verbs"] == ["get"] for rule in _rules("cluster"))
    assert not {r for rule in _rules("namespaced") for r in rule["resources"]} & cluster_scoped
    assert {r for rule in _rules("lease") for r in rule["resources"]} == {"leases"}


def _helm() -> str:
    helm = binaries.find("helm")
    if helm is None:
        pytest.skip("helm not built: run `bash tests/cluster/build.sh`")
    return str(helm)


def _template(*values: str, crds: bool = False) -> list[dict[str, Any]]:
    args = [_helm(), "template", "kt", str(CHART), "--namespace", "kubetrain-system"]
    args += ["--include-crds"] if crds else []
    for v in values:
        args += ["--set", v]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and d["metadata"].get("namespace") == namespace]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} rendered"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    lint = subprocess.run([_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    return _template(crds=True)


def test_helm_template_renders_everything(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
         "PodDisruptionBudget", "ClusterRole", "ClusterRole"]
    )
    role = _one(rendered, "ClusterRole", "kt-operator")
    assert role["rules"] == _manifest("ClusterRole")["rules"]
    for name in ("kubetrain-edit", "kubetrain-view"):
        aggregated = _one(rendered, "ClusterRole", name)
        plain = _manifest("ClusterRole", name)
        assert aggregated["rules"] == plain["rules"]
        assert {k: v for k, v in aggregated["metadata"]["labels"].items() if k.startswith("rbac.")} == {
            k: v for k, v in plain["metadata"]["labels"].items() if k.startswith("rbac.")}
    assert _one(rendered, "ClusterRole", "kubetrain-edit")["metadata"]["labels"] | {
        "rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true",
    } == _one(rendered, "ClusterRole", "kubetrain-edit")["metadata"]["labels"]
    assert _one(rendered, "ClusterRole", "kubetrain-view")["metadata"]["labels"][
        "rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not [d for d in rendered if d["kind"] in (
        "Role", "RoleBinding", "Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")]
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


def test_namespace_scoped_install_renders_roles_not_a_cluster_role() -> None:
    """watchNamespaces: a Role + RoleBinding per namespace with the namespaced rules, the Lease's
    Role in the release namespace, and a ClusterRole with only the cluster-scoped reads."""
    docs = _template("watchNamespaces={team-a,team-b}")
    sa = {"kind": "ServiceAccount", "name": "kubetrain-operator", "namespace": "kubetrain-system"}
    for ns in ("team-a", "team-b"):
        assert _one(docs, "Role", "kt-operator", ns)["rules"] == _rules("namespaced")
        binding = _one(docs, "RoleBinding", "kt-operator", ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kt-operator"}
        assert binding["subjects"] == [sa]
    assert _one(docs, "Role", "kt-operator-leader-election", "kubetrain-system")["rules"] == _rules("lease")
    assert _one(docs, "RoleBinding", "kt-operator-leader-election", "kubetrain-system")["subjects"] == [sa]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole" and not d["metadata"]["name"].startswith("kubetrain-")]
    assert [d["metadata"]["name"] for d in cluster_roles] == ["kt-operator"]
    assert cluster_roles[0]["rules"] == _rules("cluster")
    assert _one(docs, "ClusterRoleBinding", "kt-operator")["subjects"] == [sa]
    args = _one(docs, "Deployment", "kt-operator", "kubetrain-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    # without leader election, no Lease rights at all
    no_lease = _template("watchNamespaces={team-a}", "leaderElection.enabled=false")
    assert not [d for d in no_lease if d["kind"] == "Role" and d["metadata"]["namespace"] == "kubetrain-system"]


def test_job_namespaces_get_pod_security_labels() -> None:
    docs = _template("watchNamespaces={team-a}", "jobNamespaces.create=true")
    ns = _one(docs, "Namespace", "team-a")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert ns["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    baseline = _one(_template("watchNamespaces={team-a}", "jobNamespaces.create=true",
                              "jobNamespaces.podSecurity=baseline"), "Namespace", "team-a")
    assert baseline["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert not [d for d in _template("watchNamespaces={team-a}") if d["kind"] == "Namespace"]


def test_admission_policy_and_the_operator_get_the_same_allow_lists() -> None:
    docs = _template("admissionPolicy.enabled=true", "admissionPolicy.serviceAccountNames={trainer,etl}",
                     "admissionPolicy.secretNames={hf-token}")
    policy = _one(docs, "ValidatingAdmissionPolicy", "kt-trainingjob-passthrough")["spec"]
    binding = _one(docs, "ValidatingAdmissionPolicyBinding", "kt-trainingjob-passthrough")["spec"]
    assert binding == {"policyName": "kt-trainingjob-passthrough", "validationActions": ["Deny"]}
    assert policy["failurePolicy"] == "Fail"
    expressions = [v["expression"] for v in policy["validations"]]
    assert "in ['trainer', 'etl']" in expressions[0]
    assert sum("in ['hf-token']" in e for e in expressions) == 4
    assert "!has(v.hostPath)" in expressions[-1]
    for v in policy["validations"]:
        assert v["message"].startswith("spec.workers.") and "admissionPolicy." in v["message"]
    args = _one(docs, "Deployment", "kt-operator", "kubetrain-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if "policy" in a or a.startswith("--allow")] == [
        "--enforce-policy", "--allowed-service-account=trainer", "--allowed-service-account=etl",
        "--allowed-secret=hf-token"]
    # "*" drops that check; hostPath allowed drops its own; nothing left to check: no policy
    open_sa = _one(_template("admissionPolicy.enabled=true", "admissionPolicy.serviceAccountNames={*}",
                             "admissionPolicy.allowHostPath=true"), "ValidatingAdmissionPolicy", "kt-trainingjob-passthrough")
    assert not [v for v in open_sa["spec"]["validations"] if "serviceAccountName" in v["expression"] or "hostPath" in v["expression"]]
    everything = _template("admissionPolicy.enabled=true", "admissionPolicy.serviceAccountNames={*}",
                           "admissionPolicy.secretNames={*}", "admissionPolicy.allowHostPath=true")
    assert not [d for d in everything if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_kueue_option_renders_the_manifests_grant_for_kueues_manager() -> None:
    """kueue.enabled: Kueue's manager may read TrainingJobs, as manifests/kueue/rbac.yaml grants
    (tests/cluster/test_kueue.py runs the real Kueue with that file); off by default."""
    assert not [d for d in _template() if "kueue" in d["metadata"]["name"]]
    docs = _template("kueue.enabled=true")
    shipped = [d for d in yaml.safe_load_all((REPO / "manifests" / "kueue" / "rbac.yaml").read_text()) if d]
    role = _one(docs, "ClusterRole", "kt-kueue-trainingjobs")
    assert role["rules"] == next(d for d in shipped if d["kind"] == "ClusterRole")["rules"]
    binding = _one(docs, "ClusterRoleBinding", "kt-kueue-trainingjobs")
    assert binding["subjects"] == next(d for d in shipped if d["kind"] == "ClusterRoleBinding")["subjects"]
    assert binding["roleRef"]["name"] == "kt-kueue-trainingjobs"
    moved = _one(_template("kueue.enabled=true", "kueue.managerServiceAccount.namespace=queues"),
                 "ClusterRoleBinding", "kt-kueue-trainingjobs")
    assert moved["subjects"][0]["namespace"] == "queues"
