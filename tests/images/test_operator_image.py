"""The operator image itself, run with runc as its own non-root user on a read-only root
filesystem (what the chart's Deployment sets): the CLI, the CRD it prints, validation, no torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.images.conftest import REPO, VERSION
from tests.images.oci import ImageFacts, Mounts, rootfs, run

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

OPERATOR_LIMIT_BYTES = 250e6


@pytest.fixture(scope="module")
def operator(operator_image: ImageFacts) -> ImageFacts:
    return operator_image


def test_version_user_entrypoint_and_labels(operator: ImageFacts) -> None:
    result = run(operator.ref, ["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubetrain {VERSION}"
    assert operator.user == "65532:65532"
    assert operator.entrypoint == ["kubetrain"] and operator.cmd == ["operator", "--all-namespaces"]
    labels = operator.labels
    assert labels["org.opencontainers.image.version"] == VERSION
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"])
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert operator.size <= OPERATOR_LIMIT_BYTES, f"operator image {operator.size / 1e6:.0f} MB > 250 MB"


def test_crd_equals_the_charts(operator: ImageFacts) -> None:
    result = run(operator.ref, ["crd"])
    assert result.returncode == 0, result.stderr
    chart = (REPO / "charts/kubetrain/crds/trainingjobs.yaml").read_text()
    assert yaml.safe_load(result.stdout) == yaml.safe_load(chart)
    assert result.stdout.strip() == chart.strip()


def test_validate_examples_and_a_bad_spec(operator: ImageFacts, tmp_path: Path) -> None:
    examples = sorted(p.name for p in (REPO / "manifests/examples").glob("*.yaml"))
    assert examples
    mounts = Mounts(binds=[(REPO / "manifests/examples", "/examples", True)])
    good = run(operator.ref, ["validate", *(f"/examples/{name}" for name in examples)], mounts=mounts)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                                   "metadata": {"name": "b"},
                                   "spec": {"workers": {"replicas": 3, "maxReplicas": 2}}}))
    bad.chmod(0o644)
    tmp_path.chmod(0o755)
    result = run(operator.ref, ["validate", "/in/bad.yaml"], mounts=Mounts(binds=[(tmp_path, "/in", True)]))
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "spec.workers.replicas: replicas must be <= maxReplicas" in out and "Traceback" not in out


PROBE = """
import importlib.util as u, os, errno
import kopf, kubernetes.client, kubernetes.config, kubetrain.controller.handlers
print("torch", u.find_spec("torch"))
print("uid", os.getuid(), os.getgid())
try:
    open("/probe", "w")
except OSError as e:
    print("write /", errno.errorcode[e.errno])
"""


def test_no_torch_non_root_read_only_root(operator: ImageFacts) -> None:
    result = run(operator.ref, ["-c", PROBE], entrypoint=["python"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "torch None" in lines
    assert "uid 65532 65532" in lines
    assert "write / EROFS" in lines


def test_operator_command_starts_on_read_only_root(operator: ImageFacts) -> None:
    """The operator's own imports (kopf, the Kubernetes client) work as the image's user with
    nothing writable: `kubetrain operator --help` loads the operator module."""
    result = run(operator.ref, ["operator", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--all-namespaces" in result.stdout


def test_no_compiler_pip_cache_or_host_ca(operator: ImageFacts) -> None:
    with rootfs(operator.ref) as root:
        assert not any((root / "usr/bin" / cc).exists() for cc in ("gcc", "cc", "c++", "g++", "clang"))
        assert not (root / "root/.cache/pip").exists()
        assert not (root / "etc/ssl/certs/host-ca.crt").exists()
        assert not list((root / "opt/venv/bin").glob("pip*")), "no pip in the operator's virtualenv"
        assert not (root / "var/cache/kubetrain-wheels").exists()
        assert "kubetrain:x:65532:65532:" in (root / "etc/passwd").read_text()
