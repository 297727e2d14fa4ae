"""The real node's network: a network namespace joined to the host by one veth pair, all in
198.18.0.0/15 (the benchmarking range; nothing here may use 10/8, 172.16/12, 192.168/16 or a
public address).

    host  kt-host   198.18.0.1/30  the API server binds here
    node  kt-node0  198.18.0.2/30  the node's InternalIP; kubelet, containerd, kube-proxy live here
    pods  kt-cni0   198.18.1.0/24  the CNI bridge inside the node namespace (gateway .1)
    services        198.19.0.0/24  the `kubernetes` Service is .1, cluster DNS .10

The namespace has no default route, pods only a route to 198.18.0.0/15, and the namespace's
FORWARD chain drops whatever would leave by the veth for any address but the host's, so nothing
a pod sends can reach beyond this machine. Everything the kubelet and kube-proxy change in the
network (iptables chains, ip_forward, bridges) lives in the namespace and goes with it."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

NETNS = "kubetrain-node"
HOST_LINK, NODE_LINK, BRIDGE = "kt-host", "kt-node0", "kt-cni0"
HOST_IP, NODE_IP, LINK_PREFIX = "198.18.0.1", "198.18.0.2", 30
POD_CIDR, POD_GATEWAY = "198.18.1.0/24", "198.18.1.1"
SERVICE_CIDR, KUBERNETES_SERVICE_IP, DNS_SERVICE_IP = "198.19.0.0/24", "198.19.0.1", "198.19.0.10"
ALLOWED = "198.18.0.0/15"

assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(ALLOWED)
           for ip in (HOST_IP, NODE_IP, POD_GATEWAY, KUBERNETES_SERVICE_IP, DNS_SERVICE_IP))


class NetworkError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_netns(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", NETNS, *argv, check=check)


@dataclass
class NodeNetwork:
    """Create with up(), remove with down() (idempotent: also clears what a killed run left)."""

    netns: str = NETNS

    def up(self) -> None:
        self.down()
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK, "netns", self.netns)
        _run("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_LINK)
        _run("ip", "link", "set", HOST_LINK, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_LINK)
        for link in ("lo", NODE_LINK):
            _run("ip", "-n", self.netns, "link", "set", link, "up")
        # the node routes between its pods and the host (kube-proxy's DNAT to the API server)
        in_netns("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        in_netns("iptables", "-w", "-I", "FORWARD", "-o", NODE_LINK, "!", "-d", HOST_IP, "-j", "DROP")

    def down(self) -> None:
        """Deleting the namespace deletes the veth pair (both ends), the bridge and every rule."""
        if self.netns in _run("ip", "netns", "list", check=False).stdout.split():
            _run("ip", "netns", "delete", self.netns)
        _run("ip", "link", "delete", HOST_LINK, check=False)

    def exists(self) -> bool:
        return _run("ip", "link", "show", HOST_LINK, check=False).returncode == 0


def cni_config() -> dict[str, object]:
    """The CNI network of the pods: a bridge with host-local addresses and no default route."""
    return {
        "cniVersion": "0.4.0",
        "name": "kubetrain",
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": ALLOWED}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
