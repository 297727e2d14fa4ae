"""What tests get from the `cluster` fixture: kubectl, a kubernetes client and KWOK helpers
(drive a pod to Succeeded/Failed, lose or delete a node, restore the nodes)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from tests.cluster import binaries, nodes

T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> T:
    """Poll fn until it returns something truthy; return it, or fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def http_ok(url: str, expect: bytes = b"", insecure: bool = False) -> bool:
    """True when GET url answers 200 (and its body holds `expect`): a component's /healthz or
    /readyz. insecure: a self-signed serving certificate (a component's own, on loopback)."""
    import ssl
    import urllib.request

    context = None
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200 and expect in resp.read())
    except OSError:
        return False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: str
    versions: dict[str, str] = field(default_factory=binaries.versions)
    node_count: int = 4

    @classmethod
    def connect(cls, kubeconfig: Path) -> Cluster:
        """Use a cluster that is already running (e.g. `python -m tests.cluster up`)."""
        kubectl = binaries.find("kubectl") or shutil.which("kubectl")
        if kubectl is None:
            raise binaries.MissingBinaries("kubectl not found; run `bash tests/cluster/build.sh`")
        cluster = cls(kubeconfig=kubeconfig, kubectl_bin=str(kubectl))
        names = [n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]]
        indexes = [int(n.rsplit("-", 1)[1]) for n in names if n.startswith("kwok-node-")]
        cluster.node_count = max(indexes) + 1 if indexes else cluster.node_count
        return cluster

    # ------------------------------------------------------------- clients

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, an operator) that should use this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        helm = binaries.find("helm")
        if helm is None:
            raise binaries.MissingBinaries("helm not found; run `bash tests/cluster/build.sh`")
        proc = subprocess.run([str(helm), "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Each CRD's Established condition True. Not `kubectl wait --for=condition=Established`:
        asked before the API server wrote the CRD's first status, it fails at once ("status.conditions
        accessor error: <nil>") instead of waiting (CI saw it)."""
        for crd in crds:
            wait_for(lambda crd=crd: self.kubectl(
                "get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False).stdout.strip() == "True", timeout, f"CRD {crd} Established")

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    @cached_property
    def api(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @cached_property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    # ------------------------------------------------------------- pods

    def terminate_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int,
        message: str = "",
        reason: str | None = None,
        container: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Finish a pod as if its container exited with `exit_code` and wrote `message` to its
        termination log: phase Succeeded (0) or Failed (anything else). Waits for KWOK to have made
        the pod Running first, so KWOK never overwrites the result (no stage matches a finished pod)."""
        from kubernetes.client.exceptions import ApiException

        def running() -> dict[str, Any] | None:
            pod = self.api.sanitize_for_serialization(self.core.read_namespaced_pod(name, namespace))
            return pod if pod.get("status", {}).get("phase") == "Running" else None

        deadline = time.monotonic() + timeout
        while True:
            pod = wait_for(running, max(1.0, deadline - time.monotonic()), f"pod {namespace}/{name} Running")
            self._finish(pod, exit_code, message, reason, container)
            try:
                result = self.core.replace_namespaced_pod_status(name, namespace, pod)
                return dict(self.api.sanitize_for_serialization(result))
            except ApiException as e:  # 409: KWOK or a controller wrote in between; read again
                if e.status != 409 or time.monotonic() > deadline:
                    raise

    @staticmethod
    def _finish(pod: dict[str, Any], code: int, message: str, reason: str | None, container: str | None) -> None:
        now = _now()
        target = container or pod["spec"]["containers"][0]["name"]
        previous = {s["name"]: s for s in pod["status"].get("containerStatuses") or []}
        statuses = []
        for c in pod["spec"]["containers"]:
            mine = c["name"] == target
            rc = code if mine else 0
            terminated = {
                "exitCode": rc,
                "reason": (reason or ("Completed" if rc == 0 else "Error")) if mine else "Completed",
                "startedAt": previous.get(c["name"], {}).get("state", {}).get("running", {}).get("startedAt", now),
                "finishedAt": now,
            }
            if mine and message:
                terminated["message"] = message
            statuses.append({
                "name": c["name"], "image": c["image"], "imageID": "", "ready": False, "started": False,
                "restartCount": previous.get(c["name"], {}).get("restartCount", 0),
                "state": {"terminated": terminated},
            })
        status = pod["status"]
        status["containerStatuses"] = statuses
        status["phase"] = "Succeeded" if code == 0 else "Failed"
        why = "PodCompleted" if code == 0 else "PodFailed"
        conds = [c for c in status.get("conditions") or [] if c["type"] not in ("Ready", "ContainersReady")]
        conds += [{"type": t, "status": "False", "reason": why, "lastTransitionTime": now} for t in ("Ready", "ContainersReady")]
        status["conditions"] = conds

    # ------------------------------------------------------------- nodes

    def lose_node(self, name: str, delete: bool = False, wait: bool = True, timeout: float = 60.0) -> None:
        """Make a node disappear as a crashed machine would: KWOK stops managing it (no lease
        renewals, no status, its pods never finish terminating), so after the node-monitor grace
        period the real node lifecycle controller marks it Unknown, taints it unreachable and marks
        its pods not Ready (wait=True waits for that). delete=True also deletes the Node object."""
        self.core.patch_node(name, {"metadata": {"labels": {nodes.MANAGED_LABEL: None}}})
        if wait:
            wait_for(lambda: not self._node_ready(name), timeout, f"node {name} to turn NotReady/Unknown")
        if delete:
            self.delete_node(name)

    def _node_ready(self, name: str) -> bool:
        node = self.core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def delete_node(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise

    def ensure_nodes(self, timeout: float = 30.0) -> None:
        """Bring the KWOK nodes back to the initial state after a test lost or deleted some."""
        present = {n["metadata"]["name"]: n for n in self.kubectl_json("get", "nodes")["items"]}
        for i in range(self.node_count):
            node = present.get(nodes.name(i))
            if node is None:
                self.kubectl("create", "-f", "-", stdin=json.dumps(nodes.manifest(i)))
            elif node["metadata"].get("labels", {}).get(nodes.MANAGED_LABEL) != "true":
                self.core.patch_node(nodes.name(i), {"metadata": {"labels": {nodes.MANAGED_LABEL: "true"}}})
        wait_for(lambda: nodes.all_ready(self._kubectl_out, self.node_count), timeout, "KWOK nodes Ready")

    def _kubectl_out(self, *args: str, stdin: str | None = None) -> str:
        return self.kubectl(*args, stdin=stdin).stdout
