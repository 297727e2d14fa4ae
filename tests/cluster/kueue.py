"""Kueue's manager (the pinned release, built by build-kueue.sh) against the tests' control plane.

Everything comes from Kueue's own module (config/components in the Go module cache): its CRDs, its
manager ClusterRole and its admission webhooks. The manager runs as a local process:

- as its ServiceAccount `kueue-system/kueue-controller-manager` (a client certificate with that
  user name, signed by the cluster CA): RBAC is Kueue's own `manager-role` plus what
  manifests/kueue/rbac.yaml adds for TrainingJobs, nothing more;
- with the Configuration the install would have, plus manifests/kueue/kueue-configuration-patch.yaml
  (TrainingJob as an external framework);
- with Kueue's own certificate management (cert-controller: a CA and serving certificate in the
  Secret `kueue-webhook-server-cert`, injected into the webhook configurations and the CRDs'
  conversion webhooks), as a real install has it;
- serving its webhooks on the ClusterIP of the Service `kueue-webhook-service`: the API server
  dials a Service's ClusterIP (its default service resolver) and this tier's ClusterIPs are
  loopback addresses (127.2.0.0/24), so the manager binds that address itself instead of a pod
  behind the Service. The Service's port is the webhook port (free, chosen per run). Registered:
  every webhook for `kueue.x-k8s.io` kinds (Workload, ClusterQueue, ResourceFlavor, Cohort,
  LocalQueue, ...) and the CRDs' conversion webhooks; not the ones for other frameworks' kinds
  (only `batch/job` is enabled, and no test uses it).

This tier has no kubelet, so the harness plays its part for the one volume the manager needs:
it projects the Secret into the manager's certificate directory (tls.crt, tls.key, ca.crt), as
the install's secret volume would; cert-controller waits for those files before it is ready.

Off: the visibility API server (VisibilityOnDemand, an aggregated API server of its own, unused
here), leader election (one replica), the metrics endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import binaries, pki, procs
from tests.cluster.helpers import Cluster, http_ok, wait_for
from tests.cluster.launcher import free_port, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
PREFIX = "kueue-"  # what Kueue's kustomization prefixes every name with
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
FEATURE_GATES = "VisibilityOnDemand=false"


class MissingKueue(RuntimeError):
    pass


def version() -> str:
    return binaries.versions()["KUEUE_VERSION"]


def module_dir() -> Path:
    gomod = os.environ.get("KUBETRAIN_GOMODCACHE") or str(binaries.cache_dir() / "go" / "mod")
    return Path(gomod) / "sigs.k8s.io" / f"kueue@{version()}"


def binary() -> Path:
    """KUEUE_BIN, else build-kueue.sh's cache; MissingKueue names the script to run."""
    path = Path(os.environ.get("KUEUE_BIN") or binaries.cache_dir() / "bin" / f"kueue-{version()}" / "kueue")
    if not (path.is_file() and os.access(path, os.X_OK)) or not (module_dir() / "config").is_dir():
        raise MissingKueue(f"Kueue {version()} not found ({path}, {module_dir()}): "
                           "run `bash tests/cluster/build-kueue.sh`")
    return path


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _components() -> Path:
    return module_dir() / "config" / "components"


def _service_ref(port: int, path: str) -> dict[str, Any]:
    return {"service": {"namespace": NAMESPACE, "name": SERVICE, "port": port, "path": path}}


def crds(port: int) -> list[dict[str, Any]]:
    """Kueue's CRDs with the conversion webhooks its kustomization patches in."""
    crd_dir = _components() / "crd"
    patched = {}
    for entry in _docs(crd_dir / "kustomization.yaml")[0].get("patches") or []:
        patch = _docs(crd_dir / entry["path"])[0]
        patched[patch["metadata"]["name"]] = patch["spec"]["conversion"]
    out = []
    for path in sorted((crd_dir / "bases").glob("kueue.x-k8s.io_*.yaml")):
        for crd in _docs(path):
            if conversion := patched.get(crd["metadata"]["name"]):
                conversion["webhook"]["clientConfig"] = _service_ref(port, "/convert")
                crd["spec"]["conversion"] = conversion
            out.append(crd)
    return out


def rbac() -> list[dict[str, Any]]:
    """Kueue's manager ClusterRole and its Secret Role, bound to its ServiceAccount."""
    rbac_dir = _components() / "rbac"
    out: list[dict[str, Any]] = []
    for role_file, binding_file in (("role.yaml", "role_binding.yaml"),
                                    ("manager_secrets_role.yaml", "manager_secrets_role_binding.yaml")):
        role, binding = _docs(rbac_dir / role_file)[0], _docs(rbac_dir / binding_file)[0]
        for obj in (role, binding):
            obj["metadata"]["name"] = PREFIX + obj["metadata"]["name"]
            if "namespace" in obj["metadata"]:
                obj["metadata"]["namespace"] = NAMESPACE
        binding["roleRef"]["name"] = role["metadata"]["name"]
        binding["subjects"] = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
        out += [role, binding]
    return out


def webhooks(port: int) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (as its kustomization names them), reduced to
    kueue.x-k8s.io's kinds; Kueue's certificate management injects their caBundle."""
    out = []
    for doc in _docs(_components() / "webhook" / "manifests.yaml"):
        hooks = []
        for hook in doc.get("webhooks") or []:
            if any("kueue.x-k8s.io" in r.get("apiGroups", []) for r in hook.get("rules") or []):
                hook["clientConfig"] = _service_ref(port, hook["clientConfig"]["service"]["path"])
                hooks.append(hook)
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                    "metadata": {"name": PREFIX + doc["metadata"]["name"]}, "webhooks": hooks})
    return out


def configuration(health_port: int, host: str, webhook_port: int, cert_dir: Path) -> dict[str, Any]:
    """The install's Configuration for one replica, plus manifests/kueue's patch."""
    patch = _docs(REPO / "manifests" / "kueue" / "kueue-configuration-patch.yaml")[0]
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": host, "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE, "webhookSecretName": SECRET},
        "controller": {"groupKindConcurrency": {"Workload.kueue.x-k8s.io": 5}},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": ["batch/job"], **patch["integrations"]},
    }


class KueueManager:
    """Install Kueue into `cluster` and run its manager; `stop()` removes what `install()` added
    (webhooks, CRDs, RBAC, the namespace), so later tests see the cluster as it was."""

    def __init__(self, cluster: Cluster, run_dir: Path) -> None:
        self.cluster, self.run_dir = cluster, run_dir
        self.bin = binary()
        self.proc: procs.Proc | None = None
        self.health_port = self.port = 0
        self.host = ""
        self.crds: list[dict[str, Any]] = []
        self._stop_sync = threading.Event()
        self._sync: threading.Thread | None = None

    @property
    def log(self) -> Path:
        return self.run_dir / "kueue-manager.log"

    def _apply(self, objs: list[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             stdin="\n---\n".join(json.dumps(o) for o in objs), timeout=120)

    def install(self) -> None:
        """Namespace, webhook Service and Secret, CRDs, RBAC, webhooks; a kubeconfig of the
        ServiceAccount's user name from the cluster CA."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # a previous run's namespace may still be terminating (stop() does not wait for it)
        def settled() -> bool:
            got = self.cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json", check=False)
            return got.returncode != 0 or json.loads(got.stdout)["status"].get("phase") == "Active"

        wait_for(settled, 60, f"namespace {NAMESPACE} gone or Active")
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        self._apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
             "spec": {"ports": [{"port": self.port, "targetPort": self.port, "protocol": "TCP"}]}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE}},
        ])
        self.host = self.cluster.kubectl_json("get", "service", SERVICE, "-n", NAMESPACE)["spec"]["clusterIP"]
        assert self.host.startswith("127."), f"the tier's ClusterIPs are loopback, got {self.host}"
        self.crds = crds(self.port)
        self._apply(self.crds)
        self.cluster.wait_established(*(crd["metadata"]["name"] for crd in self.crds))
        self._apply(rbac())
        self.cluster.kubectl("apply", "-f", str(REPO / "manifests" / "kueue" / "rbac.yaml"))
        self._apply(webhooks(self.port))
        certs = self.cluster.kubeconfig.parent / "pki"
        ca = pki.KeyPair(certs / "ca.crt", certs / "ca.key")
        own = self.run_dir / "pki"
        own.mkdir(exist_ok=True)
        client = pki.issue(own, "kueue-client", f"/CN={USER}", ca, "clientAuth")
        server = json.loads(self.cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        write_kubeconfig(self.run_dir / "kubeconfig", server, ca.cert, client, USER)
        self.cert_dir = self.run_dir / "webhook-certs"

    def start(self) -> None:
        """Start the manager; wait until it is ready (certificates made and injected, webhook
        server up) and a ResourceFlavor dry-run passes through its webhooks."""
        self.health_port = free_port()
        config = self.run_dir / "config.yaml"
        config.write_text(json.dumps(configuration(self.health_port, self.host, self.port, self.cert_dir)))
        self.proc = procs.Proc("kueue", [
            str(self.bin), f"--config={config}", f"--kubeconfig={self.run_dir / 'kubeconfig'}",
            f"--feature-gates={FEATURE_GATES}", "--zap-log-level=2",
        ], self.log)
        self.proc.start(env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})
        if self._sync is None:
            self._stop_sync.clear()
            self._sync = threading.Thread(target=self._project_secret, name="kueue-secret-volume", daemon=True)
            self._sync.start()
        wait_for(self._ready, 120, f"Kueue's manager /readyz (log {self.log})")
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "probe"}}
        wait_for(lambda: self.cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe),
                                              check=False).returncode == 0, 60, "Kueue's webhooks to answer")

    def _project_secret(self) -> None:
        """What the kubelet does for a secret volume: keep the Secret's keys as files in the cert
        dir (written atomically, only when they changed)."""
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        from kubernetes.client.exceptions import ApiException

        while not self._stop_sync.wait(0.5):
            try:
                data = self.cluster.core.read_namespaced_secret(SECRET, NAMESPACE).data or {}
            except ApiException:
                continue
            for key, value in data.items():
                path, content = self.cert_dir / key, base64.b64decode(value)
                if not path.exists() or path.read_bytes() != content:
                    tmp = path.with_name(f".{key}.tmp")
                    tmp.write_bytes(content)
                    tmp.chmod(0o600)
                    tmp.replace(path)

    def _ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"Kueue's manager exited:\n{procs.tail(self.log, 60)}")
        return http_ok(f"http://127.0.0.1:{self.health_port}/readyz")

    def stop_manager(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        if self._sync is not None:
            self._stop_sync.set()
            self._sync.join(10)
            self._sync = None

    def stop(self) -> None:
        """Stop the manager and uninstall everything install() added."""
        self.stop_manager()
        k = self.cluster.kubectl
        for hook in webhooks(self.port):
            k("delete", hook["kind"].lower(), hook["metadata"]["name"], "--ignore-not-found", check=False)
        # Kueue's finalizers: with the manager gone nobody removes them
        for kind in ("workloads", "clusterqueues", "resourceflavors", "localqueues"):
            with contextlib.suppress(AssertionError):
                for obj in self.cluster.kubectl_json("get", f"{kind}.kueue.x-k8s.io", "-A")["items"]:
                    ns = ["-n", obj["metadata"]["namespace"]] if obj["metadata"].get("namespace") else []
                    k("patch", f"{kind}.kueue.x-k8s.io", obj["metadata"]["name"], *ns, "--type=merge",
                      "-p", '{"metadata":{"finalizers":null}}', check=False)
        for crd in self.crds:
            k("delete", "crd", crd["metadata"]["name"], "--wait=false", "--ignore-not-found", check=False)
        k("delete", "-f", str(REPO / "manifests" / "kueue" / "rbac.yaml"), "--ignore-not-found", check=False)
        for obj in rbac():
            if obj["kind"].startswith("Cluster"):
                k("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)
        k("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)

    def logs(self, lines: int = 80) -> str:
        return procs.tail(self.log, lines)


@contextlib.contextmanager
def running(cluster: Cluster, run_dir: Path, flavors: list[dict[str, Any]], priorities: dict[str, int],
            ) -> Iterator[KueueManager]:
    """Kueue installed and running, with these ResourceFlavors and PriorityClasses; all of it
    removed afterwards (the manager's log printed when something failed). MissingKueue when
    Kueue is not built."""
    manager = KueueManager(cluster, run_dir)
    try:
        manager.install()
        manager.start()
        for obj in flavors:
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
        for name, value in priorities.items():
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                "value": value}))
        yield manager
    except BaseException:
        print(manager.logs())
        raise
    finally:
        manager.stop()
        if priorities:
            cluster.kubectl("delete", "priorityclass", *priorities, "--ignore-not-found", check=False)
