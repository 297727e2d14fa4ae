"""Where the control-plane binaries are: environment overrides first, then the build.sh cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"

# binary name -> per-binary environment variable (same table as build.sh)
ENV_VARS: dict[str, str] = {
    "etcd": "TEST_ASSET_ETCD",
    "kube-apiserver": "TEST_ASSET_KUBE_APISERVER",
    "kube-controller-manager": "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
    "kube-scheduler": "TEST_ASSET_KUBE_SCHEDULER",
    "kubectl": "TEST_ASSET_KUBECTL",
    "kwok": "KWOK_BIN",
    "helm": "HELM_BIN",
    # the real-node tier only (tests/node)
    "kubelet": "TEST_ASSET_KUBELET",
    "kube-proxy": "TEST_ASSET_KUBE_PROXY",
}
# not needed to run the control plane
OPTIONAL = ("helm", "kubelet", "kube-proxy")


def versions() -> dict[str, str]:
    """The pinned versions from versions.env (KEY=VALUE lines)."""
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("KUBETRAIN_CACHE") or Path.home() / ".cache" / "kubetrain")


def bin_dir() -> Path:
    """The version-keyed directory build.sh writes into."""
    v = versions()
    key = (
        f"k8s-{v['K8S_VERSION']}_etcd-{v['ETCD_VERSION']}"
        f"_kwok-{v['KWOK_VERSION']}_helm-{v['HELM_VERSION']}"
    )
    return cache_dir() / "bin" / key


def find(name: str) -> Path | None:
    """Resolve one binary: per-binary variable, then $KUBEBUILDER_ASSETS, then the build cache."""
    candidates: list[Path] = []
    if value := os.environ.get(ENV_VARS[name]):
        candidates.append(Path(value))
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(assets) / name)
    candidates.append(bin_dir() / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path | None  # not needed to run the cluster


class MissingBinaries(RuntimeError):
    pass


def missing() -> list[str]:
    return [name for name in ENV_VARS if find(name) is None]


def resolve() -> Binaries:
    """All binaries, or MissingBinaries naming what to build."""
    absent = [name for name in missing() if name not in OPTIONAL]
    if absent:
        raise MissingBinaries(
            f"control-plane binaries not found: {', '.join(absent)} "
            f"(looked in {bin_dir()}, $KUBEBUILDER_ASSETS and TEST_ASSET_*); "
            f"run `bash tests/cluster/build.sh` first"
        )

    def get(name: str) -> Path:
        path = find(name)
        assert path is not None
        return path

    return Binaries(
        etcd=get("etcd"),
        kube_apiserver=get("kube-apiserver"),
        kube_controller_manager=get("kube-controller-manager"),
        kube_scheduler=get("kube-scheduler"),
        kubectl=get("kubectl"),
        kwok=get("kwok"),
        helm=find("helm"),
    )
