"""The e2e tier's pieces besides the podrunner: the operator as a subprocess under its own
ServiceAccount, a ReadWriteMany claim for checkpoints, TrainingJob specs, and reading results."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.helpers import Cluster, wait_for

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "kubetrain.dev", "v1alpha1"
SA_NAMESPACE, SA_NAME = "kubetrain-system", "kubetrain-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------- operator


def operator_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig holding only a token of the operator's ServiceAccount (manifests/rbac.yaml)."""
    for manifest in ("namespace.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / manifest))
    wait_for(lambda: cluster.kubectl("get", "sa", SA_NAME, "-n", SA_NAMESPACE, check=False).returncode == 0,
             30, "the operator's ServiceAccount")
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 3600 * 4}}
    token = cluster.core.create_namespaced_service_account_token(SA_NAME, SA_NAMESPACE, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": SA_NAME, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": SA_NAME}}],
        "current-context": "operator",
    }
    path.write_text(json.dumps(config))
    can = cluster.kubectl("--kubeconfig", str(path), "auth", "can-i", "update", "pods", "-A", check=False)
    assert can.stdout.strip() == "no", "the operator's kubeconfig must not be admin"
    return path


class Operator:
    """`python -m kubetrain operator --namespace NS` as a subprocess with a fast test cadence."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.health = 0
        self.log_path = log_dir / "operator.log"

    def start(self) -> Operator:
        self.health = free_port()
        argv = [sys.executable, "-m", "kubetrain", "operator", "--namespace", self.namespace,
                "--kubeconfig", str(self.kubeconfig), "--health-port", str(self.health),
                "--bind-address", "127.0.0.1", "--metrics-port", "0",
                "--backoff-base-seconds", "1", "--backoff-max-seconds", "4", "--resync-seconds", "5",
                "--progress-seconds", "1", "--log-format", "json", "--trainer-image", "kubetrain/trainer:e2e"]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        wait_for(self.healthy, 60, "operator /healthz")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the operator did not stop on SIGTERM within 30s") from None

    def logs(self, lines: int = 120) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ------------------------------------------------------------------------------- resources


def make_claim(cluster: Cluster, namespace: str, name: str) -> str:
    """A bound ReadWriteMany PersistentVolumeClaim (a PV pre-bound to it: no provisioner here).
    The podrunner maps it to one host directory per claim. Returns the PV's name."""
    pv = f"{namespace}-{name}"[:63]
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/e2e/{pv}"},
                  "claimRef": {"namespace": namespace, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]}))
    wait_for(lambda: cluster.kubectl_json("get", "pvc", name, "-n", namespace)["status"].get("phase") == "Bound",
             60, f"PVC {name} Bound")
    return pv


def tiny_job(name: str, *, replicas: int = 2, max_steps: int = 30, interval: int = 10, claim: str = "ckpt",
             step_sleep: float = 0.0, backoff_limit: int = 3, **spec: Any) -> dict[str, Any]:
    """A CPU job small enough for 2 busy cores: a 2-layer GPT, 2 workers x 1 process."""
    env = [{"name": "KUBETRAIN_FAULT_STEP_SLEEP_SECONDS", "value": str(step_sleep)}] if step_sleep else []
    body: dict[str, Any] = {
        "workers": {"replicas": replicas, "procsPerWorker": 1, **({"env": env} if env else {})},
        "model": {"preset": "tiny"},
        "training": {"maxSteps": max_steps, "globalBatchSize": 8, "microBatchSize": 4},
        "optimizer": {"lr": 0.003},
        "checkpoint": {"intervalSteps": interval, "saveTimeoutSeconds": 10, "storage": {"claimName": claim}},
        "elastic": {"rendezvousTimeoutSeconds": 60, "collectiveTimeoutSeconds": 30},
        "runPolicy": {"backoffLimit": backoff_limit},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "tj", name, "-n", namespace).get("status") or {})


def wait_phase(cluster: Cluster, namespace: str, name: str, phases: str | tuple[str, ...],
               timeout: float) -> dict[str, Any]:
    """Wait for one of `phases`; a terminal phase that was not asked for fails at once."""
    wanted = (phases,) if isinstance(phases, str) else phases

    def check() -> dict[str, Any] | None:
        s = status(cluster, namespace, name)
        phase = s.get("phase")
        if phase in wanted:
            return s
        if phase in ("Succeeded", "Failed"):
            raise AssertionError(f"{name} ended {phase}, expected {wanted}: {json.dumps(s, indent=1)}")
        return None

    return wait_for(check, timeout, f"{name} {'/'.join(wanted)}", interval=0.5)


def pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"kubetrain.dev/job-name={job}")["items"]
    return sorted(items, key=lambda p: (int(p["metadata"]["labels"]["kubetrain.dev/restart-generation"]),
                                        int(p["metadata"]["labels"]["kubetrain.dev/worker-index"]),
                                        p["metadata"]["name"]))


def metrics_steps(run_dir: Path) -> list[int]:
    """The optimizer steps in the metrics log, in the order they were logged (a resumed run appends)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "loss" in rec and isinstance(rec.get("step"), int):
            out.append(rec["step"])
    return out


def committed_step(run_dir: Path) -> int | None:
    """The step of the committed checkpoint `latest` names (checkpoint.py's layout), if any."""
    latest = run_dir / "checkpoints" / "latest"
    try:
        return int(latest.read_text().strip().rsplit("-", 1)[-1])
    except (OSError, ValueError):
        return None


def restarted_at(steps: list[int]) -> list[int]:
    """Indices where the logged step did not advance by one: where a new gang resumed."""
    return [i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1]


def describe(cluster: Cluster, namespace: str) -> str:
    """What a person would look at: jobs, pods, events."""
    out = []
    for args in (("get", "tj,pods,pvc", "-o", "wide"), ("get", "events", "--sort-by=.lastTimestamp")):
        proc = cluster.kubectl(*args, "-n", namespace, check=False)
        out.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    for tj in cluster.kubectl_json("get", "tj", "-n", namespace).get("items", []):
        out.append(f"status of {tj['metadata']['name']}: {json.dumps(tj.get('status'), indent=1)}")
    return "\n".join(out)


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f}s"
