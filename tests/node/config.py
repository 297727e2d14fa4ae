"""The real node's configuration files, as pure functions of its directories and addresses:
containerd's config.toml, the KubeletConfiguration and the KubeProxyConfiguration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.node import network

NODE_NAME = "kubetrain-node"
CGROUP_ROOT = "/kubetrain-node"  # the kubelet's own cgroup tree: removed on stop
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # fixed in the kubelet; teardown removes its links
PAUSE_IMAGE = "kubetrain.local/pause:1"
KUBELET_PORT, KUBELET_HEALTHZ_PORT = 10350, 10358  # not the defaults: the host may run its own
PROXY_HEALTHZ_PORT, PROXY_METRICS_PORT = 10356, 10359


@dataclass(frozen=True)
class NodePaths:
    """Where a node keeps things: `run` (this run, removed on stop) and `images` (containerd's
    content store and snapshots, kept between runs under the cache so images are imported once)."""

    run: Path
    images: Path

    @property
    def state(self) -> Path:
        return self.run / "containerd-state"

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.run / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.run / "cni"

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def pod_logs(self) -> Path:
        """The containers' logs (kubectl logs); the kubelet's links to them are in CONTAINER_LOG_LINKS."""
        return self.run / "pods"

    @property
    def volumes(self) -> Path:
        """Local PersistentVolumes' directories."""
        return self.run / "volumes"


def containerd_toml(paths: NodePaths) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f'root = "{paths.images}"',
        f'state = "{paths.state}"',
        # what a node for pods does not need (and what warns without kernel support)
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]',
        "[grpc]",
        f'  address = "{paths.socket}"',
        "[ttrpc]",
        f'  address = "{paths.socket}.ttrpc"',
        "[debug]",
        '  level = "warn"',
        "[metrics]",
        '  address = ""',
        f"[{cri}]",
        f'  sandbox_image = "{PAUSE_IMAGE}"',
        "  restrict_oom_score_adj = true",  # root here lacks CAP_SYS_RESOURCE
        "  netns_mounts_under_state_dir = true",  # pods' network namespaces go with the state dir
        "  enable_selinux = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        '  bin_dir = "/usr/lib/cni"',
        f'  conf_dir = "{paths.cni_conf_dir}"',
        "",
    ])


def cni_conflist() -> str:
    return json.dumps(network.cni_config(), indent=2)


def kubelet_config(paths: NodePaths, ca: Path, cert: Path, key: Path, resolv_conf: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "address": network.NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        # the host's cgroups are v1 and driven by no systemd
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": CGROUP_ROOT,
        "failSwapOn": False,
        "clusterDNS": [network.DNS_SERVICE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": str(resolv_conf),
        "maxPods": 30,
        "serializeImagePulls": False,
        # a shared machine's disk: never evict or collect the imported images because of it
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "containerLogMaxSize": "10Mi",
        "podLogsDir": str(paths.pod_logs),
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": network.NODE_IP,
        "clusterCIDR": network.POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{PROXY_METRICS_PORT}",
        # every Service connection is masqueraded: replies come back through the node, whichever
        # pod or the host answered
        "iptables": {"masqueradeAll": True, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0},  # leave the host's conntrack table size alone
    }
