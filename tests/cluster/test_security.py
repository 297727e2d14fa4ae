"""Security of a shared cluster (issue 25) on the real control plane, with the chart rendered by
the real helm binary:

- a namespace-scoped install (watchNamespaces) gives the operator's ServiceAccount rights in its
  namespaces only: SubjectAccessReviews and impersonated writes get 403 elsewhere, kube-system
  included; the operator, run under exactly that RBAC, still runs jobs there and fails one that
  breaks its pass-through policy;
- the chart's ValidatingAdmissionPolicy rejects a TrainingJob naming a ServiceAccount, Secret or
  hostPath outside the allow-lists, with the API server's own message naming the field;
- the aggregated roles let a user bound to `edit` create TrainingJobs and `view` read them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import Cluster, wait_for
from tests.cluster.test_operator import Operator, apply, condition, event_messages, pods, status, tj

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetrain"
SA = "kubetrain-operator"


def render(cluster: Cluster, release: str, namespace: str, *values: str, only: tuple[str, ...]) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values:
        args += ["--set", v]
    for template in only:
        args += ["--show-only", f"templates/{template}"]
    return [d for d in yaml.safe_load_all(cluster.helm(*args).stdout) if d]


def kubectl_apply(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))


def delete(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                    stdin="\n---\n".join(json.dumps(d) for d in docs), check=False)


def allowed(cluster: Cluster, user: str, verb: str, resource: str, namespace: str = "", group: str = "",
            groups: tuple[str, ...] = ()) -> bool:
    """A SubjectAccessReview, answered by the API server's authorizer (RBAC)."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": list(groups),
                       "resourceAttributes": {"verb": verb, "group": group, "namespace": namespace,
                                              "resource": resource.split("/")[0],
                                              "subresource": resource.partition("/")[2]}}}
    out = cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review))
    return bool(json.loads(out.stdout)["status"].get("allowed"))


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"sec-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"sec-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _token_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    wait_for(lambda: cluster.kubectl("get", "sa", SA, "-n", namespace, check=False).returncode == 0, 30, "the SA")
    token = cluster.core.create_namespaced_service_account_token(SA, namespace, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": admin["clusters"][0]["name"], "user": SA}}],
        "current-context": "op",
    }))
    return path


def test_namespace_scoped_install_confines_the_operator(cluster: Cluster, trainingjob_crd: str, namespace: str,
                                                        other_namespace: str, release_namespace: str,
                                                        tmp_path: Path) -> None:
    release = f"sec{uuid.uuid4().hex[:6]}"
    docs = render(cluster, release, release_namespace, f"watchNamespaces={{{namespace}}}",
                  only=("serviceaccount.yaml", "rbac.yaml"))
    assert "ClusterRole" in {d["kind"] for d in docs} and "Role" in {d["kind"] for d in docs}
    kubectl_apply(cluster, docs)
    try:
        user = f"system:serviceaccount:{release_namespace}:{SA}"
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{release_namespace}", "system:authenticated")

        def can(verb: str, resource: str, ns: str = "", group: str = "") -> bool:
            return allowed(cluster, user, verb, resource, ns, group, groups)

        # RBAC is eventually consistent (the authorizer's informers): wait for the grant to show.
        wait_for(lambda: can("create", "pods", namespace), 30, "the Role to take effect")
        for verb, resource, group in [("create", "pods", ""), ("delete", "pods", ""), ("watch", "trainingjobs", "kubetrain.dev"),
                                      ("patch", "trainingjobs/status", "kubetrain.dev"), ("patch", "configmaps", "")]:
            assert can(verb, resource, namespace, group), f"{verb} {resource} in the watched namespace"
            for elsewhere in (other_namespace, "kube-system", "default"):
                assert not can(verb, resource, elsewhere, group), f"{verb} {resource} in {elsewhere} must be denied"
            assert not can(verb, resource, "", group), f"{verb} {resource} cluster-wide must be denied"
        assert not can("get", "secrets", namespace), "the operator never reads Secrets"
        # The only cluster-scoped rights: reads of PriorityClasses and ResourceFlavors by name.
        assert can("get", "priorityclasses", "", "scheduling.k8s.io")
        assert not can("list", "priorityclasses", "", "scheduling.k8s.io")
        assert not can("list", "nodes") and not can("list", "namespaces")
        # The leader-election Lease: only in the release namespace, only its own name.
        assert can("create", "leases", release_namespace, "coordination.k8s.io")
        assert not can("create", "leases", other_namespace, "coordination.k8s.io")

        # Real requests, impersonating the ServiceAccount: 403 outside the watched namespace.
        as_sa = ["--as", user, "--as-group", "system:serviceaccounts",
                 "--as-group", f"system:serviceaccounts:{release_namespace}"]
        for ns in (other_namespace, "kube-system"):
            denied = cluster.kubectl("create", "configmap", "probe", "-n", ns, *as_sa, check=False)
            assert denied.returncode != 0
            assert "forbidden" in denied.stderr.lower() and f'in the namespace "{ns}"' in denied.stderr, denied.stderr
        ok = cluster.kubectl("create", "configmap", "probe", "-n", namespace, *as_sa, check=False)
        assert ok.returncode == 0, ok.stderr

        # The operator under exactly this RBAC (its own token), kopf namespaced, leader election
        # in the release namespace, the pass-through policy on: it runs a job in its namespace and
        # fails one that names a ServiceAccount outside the allow-list, creating nothing for it.
        op = Operator(_token_kubeconfig(cluster, release_namespace, tmp_path / "kubeconfig"), namespace, tmp_path,
                      extra=("--leader-elect", "--leader-election-namespace", release_namespace,
                             "--enforce-policy", "--allowed-service-account", "trainer"))
        cluster.kubectl("create", "serviceaccount", "trainer", "-n", namespace)  # pods need it to exist
        op.start()
        try:
            apply(cluster, namespace, tj("allowed", workers={"replicas": 2, "serviceAccountName": "trainer"}))
            apply(cluster, namespace, tj("denied", workers={"replicas": 2, "serviceAccountName": "default-admin"}))
            wait_for(lambda: len(pods(cluster, namespace, "allowed", live=False)) == 2, 30, "the allowed job's pods")
            failed = wait_for(lambda: (s := status(cluster, namespace, "denied")).get("phase") == "Failed" and s,
                              30, "the denied job Failed")
            cond = condition(failed, "Failed")
            assert cond["reason"] == "PolicyViolation"
            assert "spec.workers.serviceAccountName 'default-admin' is not allowed" in cond["message"]
            assert pods(cluster, namespace, "denied", live=False) == []
            assert wait_for(lambda: event_messages(cluster, namespace, "denied", "PolicyViolation"), 10,
                            "the PolicyViolation Event")
            lease = cluster.kubectl_json("get", "lease", "kubetrain-operator", "-n", release_namespace)
            assert lease["spec"]["holderIdentity"]
        finally:
            code = op.stop()
        logs = op.logs()
        assert code == 0, logs
        assert "Traceback" not in logs and "forbidden" not in logs.lower(), logs
    finally:
        delete(cluster, docs)


def test_admission_policy_rejects_what_the_allow_lists_do_not_name(cluster: Cluster, trainingjob_crd: str,
                                                                    namespace: str) -> None:
    release = f"vap{uuid.uuid4().hex[:6]}"
    docs = render(cluster, release, "kubetrain-system", "admissionPolicy.enabled=true",
                  "admissionPolicy.serviceAccountNames={trainer}", "admissionPolicy.secretNames={hf-token}",
                  # bound to this test's namespace only, so that other tests' jobs are not judged
                  f"admissionPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={namespace}",
                  only=("admission-policy.yaml",))
    assert sorted(d["kind"] for d in docs) == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    policy_name = f"{release}-trainingjob-passthrough"

    def attempt(name: str, dry_run: bool = False, **workers: Any) -> Any:
        job = tj(name, workers={"replicas": 1, **workers})
        args = ["apply", "-n", namespace, "-f", "-"] + (["--dry-run=server"] if dry_run else [])
        return cluster.kubectl(*args, stdin=json.dumps(job), check=False)

    assert attempt("legacy", serviceAccountName="root-ish").returncode == 0  # before the policy
    kubectl_apply(cluster, docs)
    try:
        # The API server compiles and starts enforcing a new policy asynchronously.
        wait_for(lambda: attempt("probe", dry_run=True, serviceAccountName="root-ish").returncode != 0, 30,
                 "the policy to be enforced")
        denied = attempt("root", serviceAccountName="root-ish")
        assert denied.returncode != 0
        assert f"ValidatingAdmissionPolicy '{policy_name}' with binding '{policy_name}' denied request" in denied.stderr
        assert "spec.workers.serviceAccountName root-ish is not allowed (allowed: trainer)" in denied.stderr
        assert "admissionPolicy.serviceAccountNames" in denied.stderr, denied.stderr

        cases: list[tuple[str, dict[str, Any], str]] = [
            ("secret-env", {"envFrom": [{"secretRef": {"name": "db-password"}}]}, "spec.workers.envFrom[].secretRef.name"),
            ("secret-key", {"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]},
             "spec.workers.env[].valueFrom.secretKeyRef.name"),
            ("secret-vol", {"volumes": [{"name": "s", "secret": {"secretName": "tls"}}]},
             "spec.workers.volumes[].secret.secretName"),
            ("projected", {"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "tls"}}]}}]},
             "spec.workers.volumes[].projected.sources[].secret.name"),
            ("host", {"volumes": [{"name": "h", "hostPath": {"path": "/var/run"}}]}, "spec.workers.volumes[].hostPath"),
        ]
        for name, workers, field in cases:
            out = attempt(name, **workers)
            assert out.returncode != 0 and field in out.stderr, f"{name}: {out.stderr}"
        assert cluster.kubectl("get", "tj", "-n", namespace, "-o", "name").stdout.split() == ["trainingjob.kubetrain.dev/legacy"]

        accepted = attempt("ok", serviceAccountName="trainer", envFrom=[{"secretRef": {"name": "hf-token"}}],
                           volumes=[{"name": "s", "secret": {"secretName": "hf-token"}}, {"name": "e", "emptyDir": {}}])
        assert accepted.returncode == 0, accepted.stderr
        assert attempt("plain").returncode == 0  # no pass-through at all: always allowed
        # Changing an admitted job's spec is judged again; metadata-only writes are not, even on a
        # job that predates the policy (the operator's own annotations must keep working).
        again = attempt("ok", serviceAccountName="root-ish")
        assert again.returncode != 0 and "serviceAccountName root-ish" in again.stderr
        labelled = cluster.kubectl("label", "tj", "legacy", "-n", namespace, "team=nlp", check=False)
        assert labelled.returncode == 0, labelled.stderr
        edited = attempt("legacy", serviceAccountName="root-ish", replicas=2)
        assert edited.returncode != 0 and "serviceAccountName root-ish" in edited.stderr
    finally:
        delete(cluster, docs)


def test_aggregated_roles_give_edit_and_view_their_trainingjob_rights(cluster: Cluster, trainingjob_crd: str,
                                                                      namespace: str, other_namespace: str) -> None:
    docs = render(cluster, "kubetrain", "kubetrain-system", only=("aggregate-roles.yaml",))
    assert sorted(d["metadata"]["name"] for d in docs) == ["kubetrain-edit", "kubetrain-view"]
    editor, viewer = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    for user, role in ((editor, "edit"), (viewer, "view")):
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
                        "-n", namespace)

    def can(user: str, verb: str, resource: str, ns: str = namespace) -> bool:
        return allowed(cluster, user, verb, resource, ns, "kubetrain.dev")

    kubectl_apply(cluster, docs)  # cluster-scoped and shared by the session: left in place
    # The clusterrole-aggregation controller copies the rules into edit/admin/view.
    wait_for(lambda: can(editor, "create", "trainingjobs") and can(viewer, "list", "trainingjobs"), 30,
             "the aggregated rules in edit and view")
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert can(editor, verb, "trainingjobs"), f"edit may {verb} trainingjobs"
    assert can(editor, "patch", "trainingjobs/scale") and can(editor, "get", "trainingjobs/status")
    assert not can(editor, "patch", "trainingjobs/status"), "status belongs to the operator"
    assert not can(editor, "create", "trainingjobs", other_namespace), "bound in one namespace only"
    for verb in ("get", "list", "watch"):
        assert can(viewer, verb, "trainingjobs")
    assert can(viewer, "get", "trainingjobs/status")
    for verb in ("create", "update", "patch", "delete"):
        assert not can(viewer, verb, "trainingjobs"), f"view may not {verb} trainingjobs"
    # And for real: the editor creates one (impersonated), the viewer cannot.
    job = json.dumps(tj("by-alice", workers={"replicas": 1}))
    made = cluster.kubectl("create", "-n", namespace, "-f", "-", "--as", editor, stdin=job, check=False)
    assert made.returncode == 0, made.stderr
    refused = cluster.kubectl("delete", "tj", "by-alice", "-n", namespace, "--as", viewer, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
