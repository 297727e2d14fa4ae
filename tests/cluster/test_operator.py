"""The operator against the real control plane, running as a subprocess under its own
ServiceAccount's RBAC (manifests/rbac.yaml, token from the TokenRequest API) — not as admin.
KWOK runs the pods; the harness finishes them with chosen exit codes and messages."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import Cluster, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubetrain.dev", "v1alpha1", "trainingjobs"
SA_NAMESPACE, SA_NAME = "kubetrain-system", "kubetrain-operator"
# Divisible by every world size used here (the DeepSpeed mapping checks it).
BATCH = 720720


# ---------------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster: Cluster, trainingjob_crd: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding only a token of the operator's ServiceAccount."""
    for manifest in ("namespace.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / manifest))
    wait_for(lambda: cluster.kubectl("get", "sa", SA_NAME, "-n", SA_NAMESPACE, check=False).returncode == 0,
             30, "the operator's ServiceAccount")
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 3600}}
    token = cluster.core.create_namespaced_service_account_token(SA_NAME, SA_NAMESPACE, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": SA_NAME, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": SA_NAME}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(json.dumps(config))
    # It really is not admin.
    who = cluster.kubectl("--kubeconfig", str(path), "auth", "can-i", "create", "pods", "--all-namespaces",
                          check=False).stdout.strip()
    assert who == "yes"
    assert cluster.kubectl("--kubeconfig", str(path), "auth", "can-i", "update", "pods", "-A",
                           check=False).stdout.strip() == "no"
    assert cluster.kubectl("--kubeconfig", str(path), "auth", "can-i", "get", "secrets", "-A",
                           check=False).stdout.strip() == "no"
    return path


class Operator:
    """`python -m kubetrain operator -n NS` as a subprocess; kill -9 and restart at will."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.namespace, self.log_dir, self.extra = kubeconfig, namespace, log_dir, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.health = 0
        self.metrics = 0

    def start(self, wait: bool = True) -> None:
        self.starts += 1
        self.health, self.metrics = _free_port(), _free_port()
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain", "operator", "--namespace", self.namespace,
             "--kubeconfig", str(self.kubeconfig), "--metrics-port", str(self.metrics),
             "--health-port", str(self.health), "--bind-address", "127.0.0.1",
             "--backoff-base-seconds", "1", "--backoff-max-seconds", "4", "--resync-seconds", "5",
             "--progress-seconds", "1",
             "--log-format", "json", "--trainer-image", "kubetrain/trainer:test", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        if wait:
            wait_for(self.healthy, 30, "operator /healthz")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def scrape(self) -> dict[str, float]:
        """The operator's Prometheus metrics, name{labels} -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {k: float(v) for k, _, v in (line.rpartition(" ") for line in lines if not line.startswith("#"))}

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM: the graceful path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("operator did not stop on SIGTERM within 30s") from None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("operator-*.log")))


@pytest.fixture
def operator(operator_kubeconfig: Path, namespace: str, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Operator]:
    op = Operator(operator_kubeconfig, namespace, tmp_path)
    op.start()
    yield op
    code = op.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(op.logs())
    assert code == 0, f"operator exit code {code} on SIGTERM"
    assert "Traceback" not in op.logs(), op.logs()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# ----------------------------------------------------------------------------------- helpers


def tj(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("training", {"globalBatchSize": BATCH})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "tj", name, "-n", namespace))


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(job(cluster, namespace, name).get("status") or {})


def pods(cluster: Cluster, namespace: str, name: str, live: bool = True) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"kubetrain.dev/job-name={name}")["items"]
    if live:
        items = [p for p in items if not p["metadata"].get("deletionTimestamp")
                 and p["status"].get("phase") not in ("Succeeded", "Failed")]
    return sorted(items, key=lambda p: int(p["metadata"]["labels"]["kubetrain.dev/worker-index"]))


def names(items: list[dict[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in items]


def wait_phase(cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (s := status(cluster, namespace, name)).get("phase") == phase and s, timeout,
                    f"{name} {phase}")


def wait_running(cluster: Cluster, namespace: str, name: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Phase Running with n workers ready, and exactly n live pods, all Running."""
    def ok() -> list[dict[str, Any]] | None:
        s = status(cluster, namespace, name)
        ps = pods(cluster, namespace, name)
        if s.get("phase") == "Running" and (s.get("workers") or {}).get("ready") == n and len(ps) == n \
                and all(p["status"].get("phase") == "Running" for p in ps):
            return ps
        return None

    return wait_for(ok, timeout, f"{name} Running with {n} workers")


def events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", namespace,
                                 "--field-selector", f"involvedObject.name={name},involvedObject.kind=TrainingJob")
    return [e["reason"] for e in sorted(items["items"], key=lambda e: e.get("lastTimestamp") or "")]


def event_messages(cluster: Cluster, namespace: str, name: str, reason: str) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", namespace,
                                 "--field-selector", f"involvedObject.name={name},involvedObject.kind=TrainingJob")
    return [e["message"] for e in items["items"] if e["reason"] == reason]


def condition(s: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in s.get("conditions") or [] if c["type"] == type_), {})


def fail(cluster: Cluster, namespace: str, pod: str, code: int, reason: str = "", message: str = "") -> None:
    text = json.dumps({"reason": reason, "message": message, "step": 7}) if reason else message
    cluster.terminate_pod(namespace, pod, code, text)


# ------------------------------------------------------------------------------------- tests


def test_apply_creates_workers_with_env_and_settings(cluster: Cluster, namespace: str, operator: Operator) -> None:
    # The worker pods pass the "restricted" Pod Security Standard (admission enforces it).
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    apply(cluster, namespace, tj(
        "settings",
        workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 3, "gpusPerWorker": 2,
                 "env": [{"name": "NCCL_DEBUG", "value": "INFO"}], "labels": {"team": "nlp"},
                 "annotations": {"note": "hi"}, "nodeSelector": {"nvidia.com/gpu.present": "true"},
                 "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "serviceAccountName": "default", "imagePullSecrets": [{"name": "regcred"}]},
        checkpoint={"saveTimeoutSeconds": 30},
        runPolicy={"backoffLimit": 2},
    ))
    ps = wait_running(cluster, namespace, "settings", 2)
    uid = job(cluster, namespace, "settings")["metadata"]["uid"]
    assert names(ps) == ["settings-worker-0-0-0", "settings-worker-1-0-0"]
    p = ps[1]
    meta, spec = p["metadata"], p["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert meta["labels"]["kubetrain.dev/worker-index"] == "1"
    assert meta["labels"]["kubetrain.dev/restart-generation"] == "0"
    assert meta["labels"]["team"] == "nlp" and meta["annotations"]["note"] == "hi"
    assert meta["ownerReferences"][0]["uid"] == uid and meta["ownerReferences"][0]["controller"] is True
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["serviceAccountName"] == "default" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["command"] == ["python", "-m", "kubetrain_trainer.launch"]
    assert c["image"] == "kubetrain/trainer:test"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {pt["name"] for pt in c["ports"]} == {"metrics", "rendezvous"}
    assert env["PET_NNODES"] == "1:3" and env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_RDZV_BACKEND"] == "c10d" and env["PET_RDZV_ID"] == uid
    assert env["PET_RDZV_ENDPOINT"] == "settings-worker-0.settings:29400"
    assert env["NCCL_DEBUG"] == "INFO" and env["KUBETRAIN_SPEC_FILE"] == "/etc/kubetrain/trainingjob.json"
    assert {v["name"] for v in spec["volumes"]} >= {"spec", "checkpoints", "dshm"}
    # ... on a read-only root filesystem, writing only to its volumes (scratch: the /tmp emptyDir)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"] and env["TMPDIR"] == "/tmp"
    assert spec["hostname"] == "settings-worker-1" and spec["subdomain"] == "settings"

    svc = cluster.kubectl_json("get", "svc", "settings", "-n", namespace)
    assert svc["spec"]["clusterIP"] == "None"
    cm = cluster.kubectl_json("get", "cm", "settings-spec", "-n", namespace)
    assert json.loads(cm["data"]["trainingjob.json"])["spec"]["workers"]["replicas"] == 2

    s = status(cluster, namespace, "settings")
    assert s["selector"] == "kubetrain.dev/job-name=settings"
    assert s["workers"] == {"desired": 2, "active": 2, "ready": 2, "failed": 0}
    assert s["worldSize"] == 4 and s["observedGeneration"] == 1 and s["startTime"]
    assert condition(s, "Running")["status"] == "True" and condition(s, "Scheduled")["status"] == "True"
    printed = cluster.kubectl("get", "tj", "settings", "-n", namespace).stdout.split("\n")[1].split()
    assert printed[1:4] == ["Running", "2", "2"]
    wait_for(lambda: {"WorkersCreated", "Running"} <= set(events(cluster, namespace, "settings")), 10, "Events")
    assert "Running" in cluster.kubectl("describe", "tj", "settings", "-n", namespace).stdout
    m = operator.scrape()
    assert m['kubetrain_jobs{phase="Running"}'] == 1 and m["kubetrain_pods_created_total"] == 2
    assert m["kubetrain_reconcile_duration_seconds_count"] >= 1


def test_success_cleans_running_pods_and_ttl_deletes_the_job(cluster: Cluster, namespace: str,
                                                               operator: Operator) -> None:
    apply(cluster, namespace, tj("done", workers={"replicas": 3, "minReplicas": 1, "maxReplicas": 3},
                                 runPolicy={"ttlSecondsAfterFinished": 3}))
    ps = wait_running(cluster, namespace, "done", 3)
    cluster.terminate_pod(namespace, names(ps)[0], 0)
    s = wait_phase(cluster, namespace, "done", "Succeeded")
    assert condition(s, "Succeeded")["reason"] == "Completed" and s["completionTime"]
    wait_for(lambda: not pods(cluster, namespace, "done"), 20, "the other workers cleaned (cleanPodPolicy Running)")
    wait_for(lambda: cluster.kubectl("get", "tj", "done", "-n", namespace, check=False).returncode != 0, 30,
             "the job deleted after its TTL")


def test_invalid_spec_fails_without_pods(cluster: Cluster, namespace: str, operator: Operator) -> None:
    # The CRD cannot judge a DeepSpeed config; the operator does, before creating anything.
    apply(cluster, namespace, tj("bad", workers={"replicas": 2}, deepspeed={"zero_optimization": {"stage": 7}}))
    s = wait_phase(cluster, namespace, "bad", "Failed")
    failed = condition(s, "Failed")
    assert failed["reason"] == "InvalidSpec" and "zero_optimization.stage" in failed["message"]
    assert pods(cluster, namespace, "bad", live=False) == []
    wait_for(lambda: "InvalidSpec" in events(cluster, namespace, "bad"), 10, "the InvalidSpec Event")


def test_scale_up_and_down_keeps_survivors(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("elastic", workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4}))
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in wait_running(cluster, namespace, "elastic", 2)}
    cluster.kubectl("scale", "tj/elastic", "-n", namespace, "--replicas=4")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in wait_running(cluster, namespace, "elastic", 4)}
    assert before.items() <= after.items()  # survivors not recreated
    raw = cluster.kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/elastic/scale")
    scale = json.loads(raw.stdout)
    assert scale["status"]["replicas"] == 4 and scale["status"]["selector"] == "kubetrain.dev/job-name=elastic"
    cluster.kubectl("scale", "tj/elastic", "-n", namespace, "--replicas=1")
    left = wait_running(cluster, namespace, "elastic", 1)
    assert names(left) == ["elastic-worker-0-0-0"] and left[0]["metadata"]["uid"] == before["elastic-worker-0-0-0"]
    s = status(cluster, namespace, "elastic")
    assert s["restarts"]["rescale"] == 2 and s["restarts"]["failure"] == 0
    assert events(cluster, namespace, "elastic").count("Scaled") == 2


def _epoch(t: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def test_failures_restart_with_backoff_until_the_limit(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("flaky", workers={"replicas": 2}, runPolicy={"backoffLimit": 2}))
    ps = wait_running(cluster, namespace, "flaky", 2)
    for attempt in (1, 2):
        victim = names(ps)[1]
        fail(cluster, namespace, victim, 1, "CollectiveTimeout", "rank 3 timed out")
        s = wait_for(lambda a=attempt: (x := status(cluster, namespace, "flaky"))["restarts"]["failure"] == a and x,
                     20, f"restart {attempt}")
        assert s["restarts"]["total"] == attempt and s["restartGeneration"] == attempt
        assert s["phase"] in ("Restarting", "Running")
        assert s["lastFailure"]["pod"] == victim and s["lastFailure"]["exitCode"] == 1
        assert s["lastFailure"]["reason"] == "CollectiveTimeout"
        ps = wait_running(cluster, namespace, "flaky", 2)
        # the new generation, created after the exponential backoff (1s, then 2s)
        assert {p["metadata"]["labels"]["kubetrain.dev/restart-generation"] for p in ps} == {str(attempt)}
        created = min(_epoch(p["metadata"]["creationTimestamp"]) for p in ps)
        assert created - _epoch(s["lastFailure"]["time"]) >= 2 ** (attempt - 1)
        kept = cluster.kubectl_json("get", "pod", victim, "-n", namespace)  # the failed pod stays for logs
        assert kept["status"]["phase"] == "Failed"
    fail(cluster, namespace, names(ps)[0], 137, message="OOMKilled")
    s = wait_phase(cluster, namespace, "flaky", "Failed")
    assert condition(s, "Failed")["reason"] == "BackoffLimitExceeded" and s["completionTime"]
    assert s["restarts"]["failure"] == 2
    wait_for(lambda: not pods(cluster, namespace, "flaky"), 20, "running pods cleaned (cleanPodPolicy Running)")
    wait_for(lambda: events(cluster, namespace, "flaky").count("WorkerFailed") == 2
             and "BackoffLimitExceeded" in events(cluster, namespace, "flaky"), 10, "Events")


def test_preemption_exit_75_restarts_without_counting(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("preempt", workers={"replicas": 2}, runPolicy={"backoffLimit": 0}))
    for attempt in (1, 2):
        ps = wait_running(cluster, namespace, "preempt", 2)
        fail(cluster, namespace, names(ps)[attempt % 2], 75, "Preempted", "checkpoint 40 committed")
        wait_for(lambda a=attempt: status(cluster, namespace, "preempt").get("restartGeneration") == a, 20,
                 "the preemption restart")
    wait_running(cluster, namespace, "preempt", 2)
    s = status(cluster, namespace, "preempt")
    assert s["restarts"]["preemption"] == 2 and s["restarts"]["failure"] == 0 and s["phase"] == "Running"
    assert events(cluster, namespace, "preempt").count("Preempted") == 2


def test_permanent_exit_fails_at_once_with_the_message(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("broken", workers={"replicas": 2}, runPolicy={"backoffLimit": 5}))
    ps = wait_running(cluster, namespace, "broken", 2)
    fail(cluster, namespace, names(ps)[0], 65, "DataError", "shard 3 is truncated")
    s = wait_phase(cluster, namespace, "broken", "Failed")
    failed = condition(s, "Failed")
    assert failed["reason"] == "DataError" and "shard 3 is truncated" in failed["message"]
    assert s["restarts"]["total"] == 0 and s["lastFailure"]["exitCode"] == 65


def test_lost_worker_0_is_replaced_without_waiting_and_the_rendezvous_name_moves(
        cluster: Cluster, namespace: str, operator: Operator) -> None:
    """Worker 0 hosts torchrun's c10d store. Its node dies and its pod hangs Terminating: the
    replacement is created at once under a new pod name but the same host name, and the
    rendezvous name <job>-worker-0.<service> moves to it."""
    apply(cluster, namespace, tj("lost", workers={"replicas": 2}))
    ps = wait_running(cluster, namespace, "lost", 2)
    victim = ps[0]
    node = victim["spec"]["nodeName"]
    cluster.lose_node(node, wait=False)
    cluster.kubectl("cordon", node)  # the replacement must land where KWOK still runs pods
    try:
        time.sleep(1)  # KWOK lets go of the node
        cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=false")
        new = wait_running(cluster, namespace, "lost", 2)[0]
        assert new["metadata"]["name"] == "lost-worker-0-0-1"
        stuck = cluster.kubectl_json("get", "pod", victim["metadata"]["name"], "-n", namespace)
        assert stuck["metadata"]["deletionTimestamp"]  # still Terminating: it was not waited for
        assert new["spec"]["hostname"] == victim["spec"]["hostname"] == "lost-worker-0"
        env = {e["name"]: e.get("value") for e in new["spec"]["containers"][0]["env"]}
        assert env["PET_RDZV_ENDPOINT"] == "lost-worker-0.lost:29400"
        assert status(cluster, namespace, "lost")["restarts"]["total"] == 0
        wait_for(lambda: any(f"pod {victim['metadata']['name']} was lost: deleted" in m
                             for m in event_messages(cluster, namespace, "lost", "WorkerLost")), 10,
                 "the WorkerLost Event naming worker 0")

        # DNS: the headless Service publishes only Ready, not deleting pods, so the Terminating
        # worker 0 drops out of `lost-worker-0.lost` and its replacement takes the name. (The
        # records themselves cannot be shown here: KWOK's pod IPs are loopback addresses, which
        # EndpointSlice validation refuses; the e2e tier resolves the name for real.)
        svc = cluster.kubectl_json("get", "svc", "lost", "-n", namespace)["spec"]
        assert svc["clusterIP"] == "None" and svc.get("publishNotReadyAddresses") is not True
    finally:
        cluster.kubectl("uncordon", node, check=False)


@pytest.mark.parametrize("how", ["deleted", "evicted"])
def test_every_loss_is_named(cluster: Cluster, namespace: str, operator: Operator, how: str) -> None:
    """docs/operator.md's loss table, for real: a worker deleted (kubectl delete) or evicted
    (the Eviction API, as a drain does) gets a WorkerLost Event and Running condition reason
    naming the pod and the cause; only that worker is replaced, nothing is counted."""
    name = f"loss-{how}"
    apply(cluster, namespace, tj(name, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 2}))
    victim = names(wait_running(cluster, namespace, name, 2))[1]
    nodes = [n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes")["items"]]
    for node in nodes:  # the replacement stays Pending, so the condition can be read at leisure
        cluster.kubectl("cordon", node)
    try:
        if how == "deleted":
            cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
        else:
            cluster.core.create_namespaced_pod_eviction(victim, namespace, {
                "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": namespace}})
        want = f"pod {victim} was lost: {how}"
        msgs = wait_for(lambda: [m for m in event_messages(cluster, namespace, name, "WorkerLost") if want in m], 20,
                        f"a WorkerLost Event saying {want!r}")
        assert len(msgs) == 1 and f"replacing it with {name}-worker-1-0-1" in msgs[0], msgs
        running = wait_for(lambda: (c := condition(status(cluster, namespace, name), "Running")).get("reason")
                           == "WorkerLost" and c, 10, "the Running condition's reason WorkerLost")
        assert running["status"] == "True" and want in running["message"]  # elastic: still running at 1
    finally:
        for node in nodes:
            cluster.kubectl("uncordon", node, check=False)
    ps = wait_running(cluster, namespace, name, 2)
    assert names(ps) == [f"{name}-worker-0-0-0", f"{name}-worker-1-0-1"]
    s = status(cluster, namespace, name)
    assert s["restarts"]["total"] == 0
    assert condition(s, "Running")["reason"] == "Running"  # healed: the reason moves on


def test_operator_killed_mid_reconcile_repeatedly(cluster: Cluster, namespace: str, operator: Operator,
                                                  operator_kubeconfig: Path, tmp_path: Path) -> None:
    """SIGKILL the operator again and again in the middle of its passes while it creates,
    restarts and scales a 12-worker gang (a pause before each API action makes a pass last
    seconds): afterwards one pod per worker, the failure counted exactly once, no status lost."""
    operator.stop()
    rng = random.Random(7)
    chaos = Operator(operator_kubeconfig, namespace, tmp_path / "chaos", extra=("--test-action-delay", "0.05"))
    (tmp_path / "chaos").mkdir()
    apply(cluster, namespace, tj("chaos", workers={"replicas": 12, "minReplicas": 1, "maxReplicas": 16},
                                 runPolicy={"backoffLimit": 5}))
    starts: set[str] = set()
    partial = 0

    def pod_names() -> set[str]:
        listed = cluster.core.list_namespaced_pod(namespace, label_selector="kubetrain.dev/job-name=chaos")
        return {p.metadata.name for p in listed.items if p.metadata.deletion_timestamp is None}

    def chaos_round() -> None:
        """Start the operator; once it has visibly begun acting, kill it a moment later."""
        nonlocal partial
        before = pod_names()
        chaos.start(wait=False)
        deadline = time.monotonic() + 5
        while pod_names() == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        chaos.kill()
        s = status(cluster, namespace, "chaos")
        if s.get("startTime"):
            starts.add(s["startTime"])
        gen = str(s.get("restartGeneration", 0))
        mine = [p for p in pods(cluster, namespace, "chaos")
                if p["metadata"]["labels"]["kubetrain.dev/restart-generation"] == gen]
        want = job(cluster, namespace, "chaos")["spec"]["workers"]["replicas"]
        partial += 0 < len(mine) < want

    for _ in range(3):
        chaos_round()
    chaos.start()
    ps = wait_running(cluster, namespace, "chaos", 12)
    chaos.kill()

    fail(cluster, namespace, names(ps)[5], 1, "Crash", "segfault")
    for _ in range(3):
        chaos_round()
    cluster.kubectl("scale", "tj/chaos", "-n", namespace, "--replicas=16")
    for _ in range(2):
        chaos_round()
    chaos.start()
    ps = wait_running(cluster, namespace, "chaos", 16, timeout=60)
    chaos.stop()

    s = status(cluster, namespace, "chaos")
    assert s["restarts"]["failure"] == 1 and s["restartGeneration"] == 1
    assert len(starts) == 1 and s["startTime"] in starts  # never reset
    indexes = [p["metadata"]["labels"]["kubetrain.dev/worker-index"] for p in ps]
    assert sorted(indexes, key=int) == [str(i) for i in range(16)]  # one live pod per worker
    assert {p["metadata"]["labels"]["kubetrain.dev/restart-generation"] for p in ps} == {"1"}
    assert partial >= 2, "the kills should have landed in the middle of passes"
    assert "Traceback" not in chaos.logs()


class FakeWorker:
    """Stands in for a worker's /progress on the pod's own (loopback: KWOK's CIDR is inside
    127.0.0.0/8) IP and its metrics port."""

    def __init__(self, ip: str, port: int = 9090) -> None:
        import http.server
        import threading

        self.state: dict[str, Any] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(outer.state).encode()
                self.send_response(200 if self.path == "/progress" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((ip, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_progress_is_polled_and_a_stall_restarts_the_gang(cluster: Cluster, namespace: str,
                                                          operator: Operator) -> None:
    apply(cluster, namespace, tj("watched", workers={"replicas": 2},
                                 runPolicy={"watchdog": {"stallSeconds": 6, "action": "restart"}}))
    ps = wait_running(cluster, namespace, "watched", 2)
    worker = FakeWorker(ps[0]["status"]["podIP"])
    try:
        worker.state = {"step": 10, "maxSteps": 100, "loss": 2.5, "learningRate": 0.001,
                        "tokensPerSecond": 1234.5, "mfu": None, "lastCheckpointStep": 8, "worldSize": 2}
        progress = wait_for(lambda: (status(cluster, namespace, "watched").get("progress") or {}).get("step") == 10
                            and status(cluster, namespace, "watched")["progress"], 10, "status.progress")
        assert progress["loss"] == 2.5 and progress["lastCheckpointStep"] == 8 and progress["tokensPerSecond"] == 1234.5
        printed = cluster.kubectl("get", "tj", "watched", "-n", namespace).stdout.split("\n")[1].split()
        assert printed[4:6] == ["10", "2.5"]  # the Step and Loss columns
    finally:
        worker.close()
    # The pod stops answering: the last value stays, with its time.
    time.sleep(1.5)  # a poll in flight at close lands
    before = status(cluster, namespace, "watched")["progress"]
    time.sleep(2.5)
    later = status(cluster, namespace, "watched")["progress"]
    assert later["updatedAt"] == before["updatedAt"] and later["step"] == 10
    # ... and the step never advances again: the watchdog restarts the gang.
    s = wait_for(lambda: (x := status(cluster, namespace, "watched")).get("restartGeneration") == 1 and x, 15,
                 "the stall watchdog's restart")
    assert s["restarts"]["stall"] == 1 and s["restarts"]["failure"] == 0
    wait_running(cluster, namespace, "watched", 2)
    wait_for(lambda: "ProgressStalled" in events(cluster, namespace, "watched"), 10, "the ProgressStalled Event")


def test_gang_not_placed_in_time_is_released_then_fails(cluster: Cluster, namespace: str, operator: Operator) -> None:
    """One worker more than the KWOK nodes have GPUs for: the placed workers are released too
    (a partial gang must not sit on GPUs), the gang is retried, and the job fails at maxAttempts."""
    replicas = cluster.node_count + 1
    apply(cluster, namespace, tj("toobig", workers={"replicas": replicas, "gpusPerWorker": 8},
                                 runPolicy={"scheduling": {"schedulingTimeoutSeconds": 10, "maxAttempts": 2}}))
    first = wait_for(lambda: len(ps := pods(cluster, namespace, "toobig")) == replicas
                     and sum(1 for p in ps if p["spec"].get("nodeName")) >= 1 and ps, 30, "the gang partly placed")
    # The pass that sees the unplaced worker may land a moment after the placement: wait for it.
    wait_for(lambda: (x := status(cluster, namespace, "toobig")).get("phase") == "Pending"
             and condition(x, "Scheduled").get("status") == "False", 10, "Scheduled=False while partly placed")
    s = wait_for(lambda: (x := status(cluster, namespace, "toobig")).get("schedulingAttempts") == 1 and x, 30,
                 "the first release")
    assert s["restarts"]["unschedulable"] == 1 and s["restarts"]["failure"] == 0
    assert condition(s, "Scheduled")["reason"] == "Unschedulable"
    wait_for(lambda: not set(names(first)) & set(names(pods(cluster, namespace, "toobig"))), 20,
             "every pod of the first attempt deleted, the scheduled ones too")
    s = wait_phase(cluster, namespace, "toobig", "Failed", timeout=40)
    assert condition(s, "Failed")["reason"] == "Unschedulable" and s["schedulingAttempts"] == 2
    wait_for(lambda: not pods(cluster, namespace, "toobig"), 20, "the last gang released")
    wait_for(lambda: events(cluster, namespace, "toobig").count("Unschedulable") >= 2, 10, "Unschedulable Events")


POD_GROUP_CRDS = [
    ("podgroups.scheduling.volcano.sh", "scheduling.volcano.sh", "v1beta1"),
    ("podgroups.scheduling.x-k8s.io", "scheduling.x-k8s.io", "v1alpha1"),
]


def _pod_group_crd(name: str, group: str, version: str) -> dict[str, Any]:
    """Just enough of the gang schedulers' PodGroup CRDs to store the objects (the schedulers
    themselves cannot run here)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
                 "versions": [{"name": version, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def test_pod_groups_for_volcano_and_scheduler_plugins(cluster: Cluster, namespace: str, operator: Operator) -> None:
    for crd in POD_GROUP_CRDS:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(_pod_group_crd(*crd)))
    cluster.wait_established(*(crd[0] for crd in POD_GROUP_CRDS), timeout=30)
    workers = {"replicas": 3, "minReplicas": 2, "maxReplicas": 3, "gpusPerWorker": 8}
    apply(cluster, namespace, tj("vc", workers=workers,
                                 runPolicy={"scheduling": {"gang": "volcano", "queue": "research",
                                                           "priorityClassName": "batch-high"}}))
    apply(cluster, namespace, tj("sp", workers=workers,
                                 runPolicy={"scheduling": {"gang": "scheduler-plugins", "schedulingTimeoutSeconds": 90}}))
    for job_name, resource, scheduler in (("vc", "podgroups.scheduling.volcano.sh", "volcano"),
                                          ("sp", "podgroups.scheduling.x-k8s.io", "scheduler-plugins-scheduler")):
        pg = wait_for(lambda j=job_name, r=resource: cluster.kubectl("get", r, j, "-n", namespace, "-o", "json",
                                                                      check=False).stdout, 20, f"{resource} {job_name}")
        group = json.loads(pg)
        assert group["spec"]["minMember"] == 2
        assert group["spec"]["minResources"]["nvidia.com/gpu"] == 16
        assert group["metadata"]["ownerReferences"][0]["name"] == job_name
        ps = wait_for(lambda j=job_name: len(x := pods(cluster, namespace, j)) == 3 and x, 20, f"{job_name} pods")
        assert {p["spec"]["schedulerName"] for p in ps} == {scheduler}
        assert all(p["status"].get("phase") == "Pending" for p in ps)  # no such scheduler runs here
    vc = json.loads(cluster.kubectl("get", "podgroups.scheduling.volcano.sh", "vc", "-n", namespace, "-o", "json").stdout)
    assert vc["spec"]["queue"] == "research" and vc["spec"]["priorityClassName"] == "batch-high"
    sp = json.loads(cluster.kubectl("get", "podgroups.scheduling.x-k8s.io", "sp", "-n", namespace, "-o", "json").stdout)
    assert sp["spec"]["scheduleTimeoutSeconds"] == 90
    assert all(p["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "vc" for p in pods(cluster, namespace, "vc"))
    assert all(p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "sp" for p in pods(cluster, namespace, "sp"))


def test_kubernetes_native_gang(cluster: Cluster, namespace: str, operator: Operator) -> None:
    """gang: kubernetes uses the control plane's own gang scheduling (scheduling.k8s.io/v1alpha2
    PodGroup, alpha behind the GenericWorkload and GangScheduling gates). Where the API is
    served, the scheduler places all of minReplicas or none; where it is not, the job says so
    (PodGroupUnavailable) and its pods are scheduled one by one."""
    served = cluster.kubectl("get", "podgroups.scheduling.k8s.io", "-n", namespace, check=False).returncode == 0
    if os.environ.get("KUBETRAIN_TEST_FEATURE_GATES") is None:
        assert served, "the test control plane enables native gang scheduling by default (tests/cluster/launcher.py)"
    replicas = cluster.node_count + 1
    apply(cluster, namespace, tj("native", workers={"replicas": replicas, "gpusPerWorker": 8},
                                 runPolicy={"scheduling": {"gang": "kubernetes"}}))
    ps = wait_for(lambda: len(x := pods(cluster, namespace, "native")) == replicas and x, 20, "the gang's pods")
    assert {p["spec"].get("schedulingGroup", {}).get("podGroupName") for p in ps} == ({"native"} if served else {None})
    if served:
        group = cluster.kubectl_json("get", "podgroups.scheduling.k8s.io", "native", "-n", namespace)
        assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": replicas}}
        # All or nothing: the scheduler looks at every pod of the gang and refuses each one
        # (PodScheduled=False) while the gang cannot fit; not one of them is bound meanwhile.
        def refused() -> list[dict[str, Any]] | bool:
            ps = pods(cluster, namespace, "native")
            return len(ps) == replicas and all(
                any(c.get("type") == "PodScheduled" and c.get("status") == "False"
                    for c in (p.get("status") or {}).get("conditions") or []) for p in ps) and ps

        ps = wait_for(refused, 30, "the scheduler's verdict (PodScheduled=False) on every pod of the gang")
        assert not [p["metadata"]["name"] for p in ps if p["spec"].get("nodeName")]
        # ...and a gang that fits is placed whole by the same scheduler.
        cluster.kubectl("delete", "tj/native", "-n", namespace, "--wait=false")
        apply(cluster, namespace, tj("fits", workers={"replicas": 2, "gpusPerWorker": 8},
                                     runPolicy={"scheduling": {"gang": "kubernetes"}}))
        wait_for(lambda: sum(1 for p in pods(cluster, namespace, "fits") if p["spec"].get("nodeName"))
                 == 2, 60, "the whole gang bound")
    else:
        wait_for(lambda: "PodGroupUnavailable" in events(cluster, namespace, "native"), 10, "PodGroupUnavailable")
        wait_for(lambda: sum(1 for p in pods(cluster, namespace, "native") if p["spec"].get("nodeName")) >= 1, 20,
                 "pods scheduled one by one")


def test_suspend_and_resume(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("pause", workers={"replicas": 2}))
    ps = wait_running(cluster, namespace, "pause", 2)
    fail(cluster, namespace, names(ps)[0], 75, "Preempted", "")
    wait_running(cluster, namespace, "pause", 2)
    cluster.kubectl("patch", "tj/pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    s = wait_phase(cluster, namespace, "pause", "Suspended")
    wait_for(lambda: not pods(cluster, namespace, "pause"), 20, "workers deleted")
    assert condition(s, "Suspended")["status"] == "True" and condition(s, "Running")["reason"] == "Suspended"
    assert s["restarts"]["preemption"] == 1  # status kept
    cluster.kubectl("patch", "tj/pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    wait_running(cluster, namespace, "pause", 2)
    s = status(cluster, namespace, "pause")
    assert condition(s, "Suspended")["status"] == "False" and condition(s, "Suspended")["reason"] == "Resumed"
    assert s["restarts"]["preemption"] == 1
    assert {"Suspended", "Resumed"} <= set(events(cluster, namespace, "pause"))


def test_delete_removes_everything(cluster: Cluster, namespace: str, operator: Operator) -> None:
    apply(cluster, namespace, tj("doomed", workers={"replicas": 3, "minReplicas": 1, "maxReplicas": 3}))
    wait_running(cluster, namespace, "doomed", 3)
    cluster.kubectl("delete", "tj", "doomed", "-n", namespace, "--wait=true", timeout=60)

    def empty() -> bool:
        left = cluster.kubectl_json("get", "pods,svc,cm", "-n", namespace, "-l", "kubetrain.dev/job-name=doomed")
        return not left["items"]

    wait_for(empty, 30, "pods, Service and ConfigMap garbage-collected")
    # The operator's next passes for the vanished job are no-ops, not errors.
    time.sleep(1)
    assert "Traceback" not in operator.logs()


# ------------------------------------------------------------------------- high availability


def _holder(cluster: Cluster, namespace: str) -> str:
    out = cluster.kubectl("get", "lease", "kubetrain-operator", "-n", namespace, "-o", "json", check=False)
    return str((json.loads(out.stdout).get("spec") or {}).get("holderIdentity") or "") if out.returncode == 0 else ""


def test_leader_election_standby_takes_over_after_sigkill(cluster: Cluster, namespace: str,
                                                          operator_kubeconfig: Path, tmp_path: Path) -> None:
    """Two replicas with --leader-elect (the chart's default): only the Lease holder reconciles;
    after the leader's SIGKILL the standby takes the Lease within 15 s and repairs the job, with
    no duplicate pod and no status lost."""
    extra = ("--leader-elect", f"--leader-election-namespace={namespace}")
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    a, b = (Operator(operator_kubeconfig, namespace, d, extra) for d in dirs)
    try:
        a.start()
        first = wait_for(lambda: _holder(cluster, namespace), 20, "the first replica to take the Lease")
        b.start()  # a standby: /healthz answers, no watches
        apply(cluster, namespace, tj("ha", workers={"replicas": 2}))
        ps = wait_running(cluster, namespace, "ha", 2)
        assert "reconcile workers started" in a.logs() and "reconcile workers started" not in b.logs()
        assert _holder(cluster, namespace) == first

        a.kill()
        killed = time.monotonic()
        cluster.kubectl("delete", "pod", names(ps)[1], "-n", namespace, "--wait=false")  # only a leader repairs
        second = wait_for(lambda: (h := _holder(cluster, namespace)) != first and h, 20, "the standby to lead")
        took = time.monotonic() - killed
        assert took <= 15, f"takeover took {took:.1f}s"
        again = wait_running(cluster, namespace, "ha", 2, timeout=20)
        # One replacement, no duplicate: worker 0 untouched, worker 1 a new pod. (Its name may be
        # the old one again: the pod was gone before the new leader ever saw it.)
        assert [p["metadata"]["labels"]["kubetrain.dev/worker-index"] for p in again] == ["0", "1"]
        assert again[0]["metadata"]["uid"] == ps[0]["metadata"]["uid"]
        assert again[1]["metadata"]["uid"] != ps[1]["metadata"]["uid"]
        every = pods(cluster, namespace, "ha", live=False)
        assert len({p["metadata"]["labels"]["kubetrain.dev/worker-index"] for p in every
                    if not p["metadata"].get("deletionTimestamp")}) == 2
        s = status(cluster, namespace, "ha")
        assert s["restarts"]["total"] == 0 and s["startTime"] and s["workers"]["ready"] == 2
        assert "reconcile workers started" in b.logs()
        print(f"leader failover: the standby ({second}) took the Lease {took:.1f}s after the leader's SIGKILL")

        assert b.stop() == 0
        wait_for(lambda: _holder(cluster, namespace) == "", 10, "the Lease released on SIGTERM")
    finally:
        a.kill()
        b.kill()
    assert "Traceback" not in b.logs(), b.logs()
