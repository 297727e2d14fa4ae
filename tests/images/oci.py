"""Run a built image the way a kubelet's runtime would, without Docker or podman: the image's
root filesystem (a buildah mount, read-only), an OCI runtime config derived from the image's own
config (entrypoint, cmd, env, user, working directory) and runc.

Why runc and not `podman run`: podman sets RLIMIT_NOFILE/NPROC on every container, which needs
CAP_SYS_RESOURCE, and these machines' root lacks it; a runtime config without rlimits runs.
Each container gets its own network namespace (loopback only), pid, ipc, uts and mount
namespaces, no capabilities and no-new-privileges: what a pod with `capabilities.drop: [ALL]`
and `allowPrivilegeEscalation: false` gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def sh(*cmd: str, timeout: float = 120) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class ImageFacts:
    ref: str
    id: str
    size: int  # bytes, uncompressed, all layers
    layers: int
    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    workdir: str
    labels: dict[str, str]

    def describe(self) -> str:
        return (f"{self.ref}: {self.size / 1e6:.0f} MB, {self.layers} layers, user {self.user!r}, "
                f"entrypoint {self.entrypoint}, cmd {self.cmd}, id {self.id[:12]}")


def inspect(ref: str) -> ImageFacts:
    info = json.loads(sh("buildah", "inspect", "--type", "image", ref))
    oci = info["OCIv1"]
    config = oci.get("config") or {}
    size = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", ref).strip())
    return ImageFacts(
        ref=ref, id=info["FromImageID"], size=size, layers=len(oci["rootfs"]["diff_ids"]),
        user=config.get("User", ""), entrypoint=config.get("Entrypoint") or [], cmd=config.get("Cmd") or [],
        env=config.get("Env") or [], workdir=config.get("WorkingDir") or "/", labels=config.get("Labels") or {},
    )


@contextlib.contextmanager
def rootfs(ref: str) -> Iterator[Path]:
    """The image's files, mounted (a throw-away container's overlay; nothing is written to it)."""
    container = sh("buildah", "from", "--pull=never", "--quiet", ref).strip()
    try:
        yield Path(sh("buildah", "mount", container).strip())
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)
        subprocess.run(["buildah", "rm", container], capture_output=True)


@dataclass
class Mounts:
    binds: list[tuple[Path, str, bool]] = field(default_factory=list)  # host path, container path, read-only
    tmpfs: list[str] = field(default_factory=list)
    shm_bytes: int = 64 << 20


def _user(spec: str) -> dict[str, int]:
    uid, _, gid = spec.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ValueError(f"image user {spec!r} is not numeric uid[:gid]")
    return {"uid": int(uid), "gid": int(gid or uid)}


def runtime_config(facts: ImageFacts, root: Path, args: list[str] | None, *, entrypoint: list[str] | None,
                   user: str | None, env: dict[str, str], mounts: Mounts, read_only: bool) -> dict[str, Any]:
    base_env = [e for e in facts.env if e.split("=", 1)[0] not in env]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": _user(user or facts.user or "0"),
            "args": (facts.entrypoint if entrypoint is None else entrypoint) + (facts.cmd if args is None else args),
            "env": base_env + [f"{k}={v}" for k, v in env.items()],
            "cwd": facts.workdir,
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(root), "readonly": read_only},
        "hostname": "kubetrain-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={mounts.shm_bytes}"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            *({"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
              for d in mounts.tmpfs),
            *({"destination": dest, "type": "bind", "source": str(src),
               "options": ["rbind", "ro" if ro else "rw"]} for src, dest, ro in mounts.binds),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def run(ref: str, args: list[str] | None = None, *, entrypoint: list[str] | None = None, user: str | None = None,
        env: dict[str, str] | None = None, mounts: Mounts | None = None, read_only: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``ref`` to completion under runc: its entrypoint (or ``entrypoint``) with ``args``
    instead of its cmd, as its user (or ``user``)."""
    facts = inspect(ref)
    state = Path(tempfile.mkdtemp(prefix="kt-runc-"))
    name = f"kt-{uuid.uuid4().hex[:12]}"
    try:
        with rootfs(ref) as root:
            bundle = state / "bundle"
            bundle.mkdir()
            config = runtime_config(facts, root, args, entrypoint=entrypoint, user=user, env=env or {},
                                    mounts=mounts or Mounts(), read_only=read_only)
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
            cmd = ["runc", "--root", str(state / "runc"), "run", "--bundle", str(bundle), name]
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            finally:
                subprocess.run(["runc", "--root", str(state / "runc"), "delete", "--force", name],
                               capture_output=True)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def have_tools() -> str | None:
    """Why the image tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the image tests need root (buildah and runc as root)"
    missing = [t for t in ("buildah", "podman", "runc", "debootstrap") if shutil.which(t) is None]
    return f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}" if missing else None
