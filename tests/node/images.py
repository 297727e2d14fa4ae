"""Images on the real node: the sandbox (pause) and CoreDNS as one-layer images made here from
the binaries build-node-images.sh built, and the product's operator and trainer images from
images/build.sh; all imported into the node's containerd (namespace k8s.io), which keeps them
between runs: an import is skipped when the image is there with the same content."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

from tests.cluster import binaries

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = HERE / "build-node-images.sh"
COREDNS_IMAGE = "kubetrain.local/coredns:{version}"
NONROOT = "65532:65532"


class MissingNodeBinaries(RuntimeError):
    pass


def tools_dir() -> Path:
    v = binaries.versions()
    return binaries.cache_dir() / "bin" / f"node-coredns-{v['COREDNS_VERSION']}"


def tool(name: str) -> Path:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        raise MissingNodeBinaries(f"{path} not found; run `bash tests/node/build-node-images.sh` first")
    return path


def coredns_image() -> str:
    return COREDNS_IMAGE.format(version=binaries.versions()["COREDNS_VERSION"])


def one_binary_archive(binary: Path, ref: str, user: str, out: Path) -> Path:
    """A docker-archive tar of an image whose only file is `binary` at /<name>, its entrypoint."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(binary), arcname=binary.name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755
        info.mtime = 0
        with binary.open("rb") as f:
            tar.addfile(info, f)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [f"/{binary.name}"], "User": user},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in (("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


class NodeImages:
    """Imports into one containerd; `stamps` records what was imported (image -> content id)."""

    def __init__(self, socket: Path, stamps: Path) -> None:
        self.socket, self.stamps = socket, stamps

    def ctr(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def present(self, ref: str, content_id: str) -> bool:
        stamps = self._stamps()
        return stamps.get(ref) == content_id and ref in self.ctr("images", "ls", "-q").split()

    def import_archive(self, archive: Path, ref: str, content_id: str) -> None:
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=1800)
        self._record(ref, content_id)

    def ensure_tool_image(self, name: str, ref: str, user: str, workdir: Path) -> None:
        binary = tool(name)
        content_id = hashlib.sha256(binary.read_bytes()).hexdigest()
        if not self.present(ref, content_id):
            self.import_archive(one_binary_archive(binary, ref, user, workdir / f"{name}.tar"), ref, content_id)

    def ensure_product_image(self, name: str, ref: str) -> float:
        """images/build.sh's image (built or found up to date), imported unless already there.
        Returns the seconds spent importing (0 when skipped)."""
        build = subprocess.run(["bash", "images/build.sh", "--only", name], cwd=REPO, capture_output=True,
                               text=True, timeout=3600)
        if build.returncode != 0:
            raise RuntimeError(f"images/build.sh --only {name} failed:\n{build.stderr[-4000:]}")
        image_id = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
                                  capture_output=True, text=True, check=True).stdout.strip()
        if self.present(ref, image_id):
            return 0.0
        started = time.monotonic()
        env = {**os.environ, "CONTAINERD_ADDRESS": str(self.socket)}
        proc = subprocess.run(["bash", "images/build.sh", "--only", name, "--import-containerd"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"importing {ref} into the node failed:\n{proc.stderr[-4000:]}")
        self._record(ref, image_id)
        return time.monotonic() - started

    def _stamps(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.stamps.read_text()))
        except (OSError, ValueError):
            return {}

    def _record(self, ref: str, content_id: str) -> None:
        stamps = {**self._stamps(), ref: content_id}
        tmp = self.stamps.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamps, indent=1))
        tmp.replace(self.stamps)
