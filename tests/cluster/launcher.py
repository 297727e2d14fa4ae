"""Start a real control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK with fake GPU nodes.

    cp = ControlPlane()
    info = cp.start()        # blocks until nodes are Ready; info.kubeconfig is the admin kubeconfig
    ...
    cp.stop()

Every component runs in its own process group with its log in <run_dir>/logs/; all of them are
stopped by stop(), at interpreter exit, on SIGTERM/SIGHUP, and (unless detached) when the Python
process that started them dies. Only the standard library, openssl and kubectl are needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.cluster import binaries, nodes, pki, procs

HERE = Path(__file__).resolve().parent
SERVICE_CIDR = "127.2.0.0/24"  # loopback like the pod IPs: nothing may dial a real address
SERVICE_IP = "127.2.0.1"
KWOK_DEFAULT_CIDR = "127.1.255.0/24"  # pods on a node without podCIDR; loopback, never private
# Kubernetes' native gang scheduling (alpha in 1.36): the Workload/PodGroup API and the
# scheduler's all-or-nothing placement.
NATIVE_GANG_GATES = "GenericWorkload=true,GangScheduling=true"
NATIVE_GANG_RUNTIME_CONFIG = "scheduling.k8s.io/v1alpha2=true"
START_TIMEOUT = float(os.environ.get("KUBETRAIN_CLUSTER_START_TIMEOUT", "120"))
# The operator's ServiceAccount (manifests/rbac.yaml): the one identity the audit log records,
# into AUDIT_LOG beside the kubeconfig.
OPERATOR_USER = "system:serviceaccount:kubetrain-system:kubetrain-operator"
AUDIT_LOG = "audit.log"


class StartupError(RuntimeError):
    pass


@dataclass
class ClusterInfo:
    """What a running cluster is: enough to use it and to stop it from another process."""

    run_dir: str
    kubeconfig: str
    server: str
    versions: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    exes: dict[str, str] = field(default_factory=dict)
    kubectl: str = ""
    real_node: bool = False

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterInfo:
        return cls(**json.loads(path.read_text()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str, ca: Path, client: pki.KeyPair, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubetrain-test", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}}],
        "contexts": [{"name": "kubetrain-test", "context": {"cluster": "kubetrain-test", "user": user}}],
        "current-context": "kubetrain-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    path.chmod(0o600)


class ControlPlane:
    def __init__(
        self,
        run_dir: Path | None = None,
        *,
        node_count: int = 4,
        detach: bool = False,
        keep_run_dir: bool | None = None,
        extra_apiserver_args: list[str] | None = None,
        feature_gates: str = "",
        address: str = "127.0.0.1",
        service_cidr: str = SERVICE_CIDR,
        service_ip: str = SERVICE_IP,
    ) -> None:
        self.bins = binaries.resolve()
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="kubetrain-cluster-"))
        self.node_count = node_count
        self.detach = detach
        self.keep_run_dir = (
            bool(os.environ.get("KUBETRAIN_KEEP_RUN_DIR")) if keep_run_dir is None else keep_run_dir
        )
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        # where the API server listens and advertises itself: loopback, or for the real-node tier
        # an address pods can reach (tests/node/network.py), with a Service range to match
        self.address, self.service_cidr, self.service_ip = address, service_cidr, service_ip
        # e.g. GenericWorkload=true,GangScheduling=true (alpha in 1.36) for the native gang scheduling
        # API; given to kube-apiserver, kube-controller-manager and kube-scheduler alike
        # On by default so the cluster tier proves `gang: kubernetes` against the real scheduler;
        # set the variables to "" to run without them.
        self.feature_gates = feature_gates or os.environ.get("KUBETRAIN_TEST_FEATURE_GATES", NATIVE_GANG_GATES)
        if runtime := os.environ.get("KUBETRAIN_TEST_RUNTIME_CONFIG", NATIVE_GANG_RUNTIME_CONFIG):
            self.extra_apiserver_args.append(f"--runtime-config={runtime}")
        self.procs: list[procs.Proc] = []
        self.info: ClusterInfo | None = None
        self.certs: pki.Pki | None = None
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ public

    def start(self) -> ClusterInfo:
        started = time.monotonic()
        if not self.detach:
            procs.on_exit(self.stop)
        for attempt in (1, 2):
            try:
                info = self._start()
                break
            except StartupError as e:
                self._stop_procs()
                # ports are picked free but bound later; on a rare collision start over once
                if attempt == 2 or "address already in use" not in str(e):
                    self.stop(keep_logs=True)
                    raise
                shutil.rmtree(self.run_dir, ignore_errors=True)
            except BaseException:
                self.stop(keep_logs=True)
                raise
        info.pids = {p.name: p.pid for p in self.procs}
        info.exes = {p.name: p.argv[0] for p in self.procs}
        (self.run_dir / "started-in-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return info

    def stop(self, keep_logs: bool = False) -> None:
        self._stop_procs()
        procs.forget(self.stop)
        if keep_logs or self.keep_run_dir:
            # etcd data is large and useless afterwards
            shutil.rmtree(self.run_dir / "etcd", ignore_errors=True)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _stop_procs(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # ----------------------------------------------------------------- startup

    def _start(self) -> ClusterInfo:
        d = self.run_dir
        (d / "logs").mkdir(parents=True, exist_ok=True)
        certs = self.certs = pki.generate(d / "pki", service_ip=self.service_ip, extra_ips=[self.address])
        b = self.bins

        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            str(b.etcd), "--name=kubetrain", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=kubetrain=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health", b'"health":"true"'))

        api_port = free_port()
        server = f"https://{self.address}:{api_port}"
        # Every request of the operator's ServiceAccount (and nobody else's) at Metadata level:
        # tests/cluster/test_rbac_audit.py derives the RBAC the code needs from it.
        audit_policy = d / "audit-policy.yaml"
        audit_policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
        }))
        self._spawn("kube-apiserver", [
            str(b.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={api_port}",
            f"--cert-dir={d / 'pki'}",
            f"--tls-cert-file={certs.apiserver.cert}", f"--tls-private-key-file={certs.apiserver.key}",
            f"--client-ca-file={certs.ca.cert}",
            "--authorization-mode=Node,RBAC", "--anonymous-auth=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs.sa_pub}",
            f"--service-account-signing-key-file={certs.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            # on loopback its endpoint would be 127.0.0.1, which validation refuses
            *(["--endpoint-reconciler-type=none"] if self.address.startswith("127.") else []),
            "--allow-privileged=true",
            f"--kubelet-client-certificate={certs.clients['apiserver-kubelet-client'].cert}",
            f"--kubelet-client-key={certs.clients['apiserver-kubelet-client'].key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={certs.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={certs.clients['front-proxy-client'].cert}",
            f"--proxy-client-key-file={certs.clients['front-proxy-client'].key}",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={d / AUDIT_LOG}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            *self.extra_apiserver_args,
        ])
        self._ssl = ssl.create_default_context(cafile=str(certs.ca.cert))
        admin = certs.clients["admin"]
        self._ssl.load_cert_chain(str(admin.cert), str(admin.key))
        self._wait("kube-apiserver", lambda: self._http_ok(f"{server}/readyz", b"ok"))

        kubeconfig = d / "kubeconfig"
        write_kubeconfig(kubeconfig, server, certs.ca.cert, admin, "kubetrain-admin")
        kc = {name: d / f"{name}.kubeconfig" for name in ("kube-controller-manager", "kube-scheduler", "kwok")}
        for name, path in kc.items():
            write_kubeconfig(path, server, certs.ca.cert, certs.clients[name], name)

        kcm = kc["kube-controller-manager"]
        self._spawn("kube-controller-manager", [
            str(b.kube_controller_manager),
            f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", f"--cert-dir={d / 'kcm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={certs.sa_key}",
            f"--root-ca-file={certs.ca.cert}",
            f"--cluster-signing-cert-file={certs.ca.cert}", f"--cluster-signing-key-file={certs.ca.key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--controllers=*",
            "--node-monitor-grace-period=16s",
            "--concurrent-gc-syncs=5", "--concurrent-namespace-syncs=5",
        ])
        sched = kc["kube-scheduler"]
        sched_port = free_port()
        self._spawn("kube-scheduler", [
            str(b.kube_scheduler),
            f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}", f"--cert-dir={d / 'scheduler-certs'}",
            "--leader-elect=false",
        ])
        kwok_port = free_port()
        self._spawn("kwok", [
            str(b.kwok), f"--kubeconfig={kc['kwok']}",
            f"--config={HERE / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
            f"--manage-nodes-with-label-selector={nodes.MANAGED_LABEL}=true",
            "--node-ip=127.0.0.1", f"--cidr={KWOK_DEFAULT_CIDR}",
            f"--server-address=127.0.0.1:{kwok_port}", f"--node-port={kwok_port}",
            "--node-lease-duration-seconds=20"  # renewed every 5 s,
        ], env={**os.environ, "HOME": str(d)})  # keep kwok away from ~/.kwok

        self.info = ClusterInfo(
            run_dir=str(d), kubeconfig=str(kubeconfig), server=server,
            versions=binaries.versions(), kubectl=str(b.kubectl),
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait("kube-scheduler", lambda: self._http_ok(f"https://127.0.0.1:{sched_port}/healthz", b"ok", insecure))
        self._wait("kube-controller-manager", self._service_accounts_ready)
        nodes.create(self.kubectl, self.node_count)
        self._wait("kwok", lambda: nodes.all_ready(self.kubectl, self.node_count))
        return self.info

    # ---------------------------------------------------------------- helpers

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        from subprocess import run

        assert self.info is not None
        proc = run(
            [str(self.bins.kubectl), f"--kubeconfig={self.info.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self.feature_gates and name.startswith("kube-"):
            argv = [*argv, f"--feature-gates={self.feature_gates}"]
        proc = procs.Proc(name, argv, self.run_dir / "logs" / f"{name}.log")
        proc.start(env=env, detach=self.detach)
        self.procs.append(proc)

    def _http_ok(self, url: str, expect: bytes, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context or self._ssl) as resp:
                return bool(resp.status == 200 and expect in resp.read())
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _service_accounts_ready(self) -> bool:
        # the token controller made `default` and the root-CA publisher made kube-root-ca.crt
        with contextlib.suppress(RuntimeError):
            self.kubectl("get", "serviceaccount/default", "configmap/kube-root-ca.crt", "-n", "default")
            return True
        return False

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise StartupError(self._failure(proc, f"{proc.name} exited during startup"))
            if ready():
                return
            time.sleep(0.2)
        proc = next((p for p in self.procs if p.name == name), self.procs[-1])
        raise StartupError(self._failure(proc, f"{name} not ready after {timeout:.0f}s"))

    def _failure(self, proc: procs.Proc, what: str) -> str:
        return f"{what}; run dir {self.run_dir}; last lines of {proc.log}:\n{procs.tail(proc.log)}"
