"""The product as users meet it, on a real kubelet: `helm install` of the chart (the operator as
a pod under its ServiceAccount, in-cluster config through the `kubernetes` Service), then
TrainingJobs whose workers train in real containers of the trainer image, in namespaces that
enforce Pod Security "restricted", rendezvous through the headless Service's DNS name over the
pod network, checkpoints on a PersistentVolumeClaim bound to a local volume."""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from typing import Any

import pytest

from tests.cluster.helpers import Cluster, wait_for
from tests.e2e.harness import tiny_job
from tests.node import network
from tests.node.conftest import OPERATOR_NAMESPACE, RELEASE, REPO, volume_dir

pytestmark = pytest.mark.node
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubetrain-operator"


def submit(cluster: Cluster, namespace: str, job: dict[str, Any]) -> str:
    job["metadata"]["namespace"] = namespace
    job["spec"].setdefault("runPolicy", {})["cleanPodPolicy"] = "None"  # keep pods for their logs
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    return str(job["metadata"]["name"])


def job_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "tj", name, "-n", namespace).get("status") or {})


def wait_phase(cluster: Cluster, namespace: str, name: str, phase: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = job_status(cluster, namespace, name)
        if s.get("phase") in {"Succeeded", "Failed"} and s.get("phase") != phase:
            raise AssertionError(f"{name} ended {s.get('phase')}, expected {phase}: {json.dumps(s)[:3000]}")
        return s if s.get("phase") == phase else None

    return wait_for(reached, timeout, f"{name} {phase}", interval=0.5)


def worker_pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"kubetrain.dev/job-name={job}")["items"]
    return list(items)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def operator_pods(cluster: Cluster, terminating: bool = False) -> set[str]:
    items = cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)["items"]
    return {p["metadata"]["name"] for p in items if terminating or not p["metadata"].get("deletionTimestamp")}


def logs(cluster: Cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", "-n", namespace, pod).stdout


def test_operator_runs_as_a_pod_under_its_service_account(real_cluster: Cluster, release: str) -> None:
    pods = real_cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)["items"]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "kubetrain-operator"
        assert pod["spec"]["nodeName"] == "kubetrain-node"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(network.POD_CIDR)
    # in-cluster config through the `kubernetes` Service: one replica takes the Lease and renews it
    # (a standby is Ready before anyone leads: its /healthz answers while it waits for the Lease)
    def holder() -> str | None:
        lease = real_cluster.kubectl("get", "lease", "kubetrain-operator", "-n", OPERATOR_NAMESPACE,
                                     "-o", "jsonpath={.spec.holderIdentity}", check=False)
        return lease.stdout.strip() or None

    leader = wait_for(holder, 60, "a leader holding the Lease")
    names = [p["metadata"]["name"] for p in pods]
    assert any(leader.startswith(n) for n in names), (leader, names)
    ns = real_cluster.kubectl_json("get", "namespace", OPERATOR_NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_two_workers_train_over_the_pod_network(real_cluster: Cluster, job_namespace: str, claim: str) -> None:
    name = submit(real_cluster, job_namespace, tiny_job("tiny", max_steps=30, interval=10, claim=claim))
    s = wait_phase(real_cluster, job_namespace, name, "Succeeded", 240)
    assert s["progress"]["step"] == 30, s.get("progress")
    assert s["progress"].get("loss") is not None, s["progress"]
    pods = worker_pods(real_cluster, job_namespace, name)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        # the rendezvous endpoint is worker 0's name under the job's headless Service
        assert env["PET_RDZV_ENDPOINT"].startswith(f"{name}-worker-0.{name}:"), env["PET_RDZV_ENDPOINT"]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(network.POD_CIDR)
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    worker0 = next(p["metadata"]["name"] for p in pods if "-worker-0-" in p["metadata"]["name"])
    out = logs(real_cluster, job_namespace, worker0)
    assert "training finished at step 30" in out, out[-3000:]
    service = real_cluster.kubectl_json("get", "service", name, "-n", job_namespace)
    assert service["spec"]["clusterIP"] == "None"
    # the checkpoints are on the PersistentVolume's directory on the node
    saved = sorted(p.name for p in (volume_dir(job_namespace) / name).rglob("*") if p.is_dir())
    assert any("30" in d for d in saved), saved


def test_deleted_worker_resumes_from_the_checkpoint_on_the_claim(real_cluster: Cluster, job_namespace: str,
                                                                 claim: str) -> None:
    job = tiny_job("resume", max_steps=120, interval=10, claim=claim, step_sleep=0.25)
    name = submit(real_cluster, job_namespace, job)
    wait_for(lambda: (job_status(real_cluster, job_namespace, name).get("progress") or {}).get("step", 0) >= 22,
             240, "step 22")
    victim = next(p["metadata"]["name"] for p in worker_pods(real_cluster, job_namespace, name)
                  if "-worker-1-" in p["metadata"]["name"])
    real_cluster.kubectl("delete", "pod", victim, "-n", job_namespace, "--wait=false")
    s = wait_phase(real_cluster, job_namespace, name, "Succeeded", 300)
    assert s["progress"]["step"] == 120, s.get("progress")
    events = real_cluster.kubectl_json("get", "events", "-n", job_namespace, "--field-selector",
                                       f"involvedObject.name={name}")["items"]
    assert any(e["reason"] == "WorkerLost" and victim in e["message"] for e in events), \
        [(e["reason"], e["message"]) for e in events]
    # rank 0 (worker 0's pod, kept or replaced) loaded the last checkpoint from the claim
    out = "".join(logs(real_cluster, job_namespace, p["metadata"]["name"])
                  for p in worker_pods(real_cluster, job_namespace, name) if "-worker-0-" in p["metadata"]["name"])
    before, loaded, _ = out.partition("loaded checkpoint ")
    assert loaded, out[-3000:]
    committed = re.findall(r"checkpoint \S*step-(\d+) committed", before)
    assert committed and int(committed[-1]) >= 22, out[-3000:]
    # the last checkpoint committed before the loss (the stop checkpoint the deleted pod's SIGTERM
    # asked for, or the last interval one) is the one loaded
    resumed = int(out.split("continuing at step", 1)[1].split()[0])
    assert resumed == int(committed[-1]) + 1, out[-3000:]
    assert "training finished at step 120" in out, out[-2000:]


def test_worker_exiting_65_fails_the_job_with_its_message(real_cluster: Cluster, job_namespace: str,
                                                          claim: str) -> None:
    job = tiny_job("badentry", max_steps=5, claim=claim, model={"entrypoint": "no_such_module:build"})
    name = submit(real_cluster, job_namespace, job)
    s = wait_phase(real_cluster, job_namespace, name, "Failed", 240)
    failed = condition(s, "Failed")
    assert failed.get("reason") == "ModelError" and "no_such_module" in failed["message"], failed
    assert s["lastFailure"]["exitCode"] == 65, s["lastFailure"]
    assert s["restarts"]["total"] == 0, s["restarts"]
    # the kubelet read the reason from the trainer's termination log
    terminated = [p["status"]["containerStatuses"][0]["state"].get("terminated") or {}
                  for p in worker_pods(real_cluster, job_namespace, name)]
    assert any(t.get("exitCode") == 65 and "no_such_module" in (t.get("message") or "") for t in terminated), terminated


def test_waiting_on_an_image_or_a_node_is_visible(real_cluster: Cluster, job_namespace: str, claim: str) -> None:
    job = tiny_job("noimage", max_steps=5, claim=claim)
    job["spec"]["workers"]["image"] = "kubetrain.local/no-such-trainer:0"
    name = submit(real_cluster, job_namespace, job)
    started = time.monotonic()

    def pulled_reason() -> dict[str, Any] | None:
        running = condition(job_status(real_cluster, job_namespace, name), "Running")
        return running if running.get("reason") in {"ErrImagePull", "ImagePullBackOff"} else None

    running = wait_for(pulled_reason, 60, "the kubelet's image pull reason on the Running condition")
    waited = time.monotonic() - started
    assert "no-such-trainer" in running["message"], running
    describe = real_cluster.kubectl("describe", "tj", name, "-n", job_namespace).stdout
    assert "ErrImagePull" in describe or "ImagePullBackOff" in describe, describe[-3000:]

    job = tiny_job("nonode", max_steps=5, claim=claim)
    job["spec"]["workers"]["nodeSelector"] = {"kubernetes.io/hostname": "no-such-node"}
    other = submit(real_cluster, job_namespace, job)

    def unschedulable() -> dict[str, Any] | None:
        scheduled = condition(job_status(real_cluster, job_namespace, other), "Scheduled")
        return scheduled if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable" else None

    scheduled = wait_for(unschedulable, 60, "Scheduled=False Unschedulable")
    assert "node(s) didn't match" in scheduled["message"], scheduled
    print(f"image pull reason on the job after {waited:.1f} s")


def test_helm_upgrade_mid_job_makes_no_duplicate_pods(real_cluster: Cluster, job_namespace: str, claim: str) -> None:
    name = submit(real_cluster, job_namespace, tiny_job("upgrade", max_steps=60, interval=10, claim=claim,
                                                        step_sleep=0.25))
    wait_phase(real_cluster, job_namespace, name, "Running", 180)
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            seen.update(p["metadata"]["uid"] for p in worker_pods(real_cluster, job_namespace, name))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        old = operator_pods(real_cluster)
        # a changed pod template: the Deployment replaces both operator pods (the leader among them)
        real_cluster.helm("upgrade", RELEASE, str(REPO / "charts" / "kubetrain"), "-n", OPERATOR_NAMESPACE,
                          "--reuse-values", "--set", "logFormat=plain", "--wait", "--timeout", "180s", timeout=240)
        wait_for(lambda: not old & operator_pods(real_cluster, terminating=True), 60, "the old operator pods gone")
        new = operator_pods(real_cluster)
        assert len(new) == 2 and not old & new, (old, new)  # every operator pod was replaced
        s = wait_phase(real_cluster, job_namespace, name, "Succeeded", 300)
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 2, f"{len(seen)} worker pods existed for a 2-worker job: {sorted(seen)}"
    assert s["restarts"]["total"] == 0 and s["progress"]["step"] == 60, s


def test_helm_uninstall_keeps_the_crd_and_ownership_cleans_up(real_cluster: Cluster, job_namespace: str,
                                                              claim: str) -> None:
    name = submit(real_cluster, job_namespace, tiny_job("orphan", max_steps=400, claim=claim, step_sleep=0.25))
    wait_phase(real_cluster, job_namespace, name, "Running", 180)
    real_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
    from tests.node import conftest

    conftest._state["release"] = False
    wait_for(lambda: not real_cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l",
                                                   OPERATOR_SELECTOR)["items"], 60, "operator pods gone")
    real_cluster.kubectl("get", "crd", "trainingjobs.kubetrain.dev")  # Helm keeps CRDs
    assert len(worker_pods(real_cluster, job_namespace, name)) == 2
    real_cluster.kubectl("delete", "tj", name, "-n", job_namespace, "--wait=false")
    wait_for(lambda: not worker_pods(real_cluster, job_namespace, name), 90,
             "worker pods collected through their owner references")
    wait_for(lambda: real_cluster.kubectl("get", "service", name, "-n", job_namespace, check=False).returncode != 0,
             60, "the headless Service collected")
