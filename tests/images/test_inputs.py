"""What the image builds read agrees with the rest of the repository (no root, no buildah):
the locks satisfy pyproject.toml, every copy of the version and the image names agree with
pyproject.toml (the one place that sets the version), and the wheel holds every subpackage."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from tests.images.conftest import REGISTRY, REPO, VERSION

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def lock_hashes(name: str) -> dict[str, tuple[str, list[str]]]:
    """dist -> (version, sha256 hashes) of images/<name>.lock (pip's requirement-file syntax:
    a pin, then its `--hash` options on continuation lines)."""
    text = (REPO / "images" / f"{name}.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            pin, *options = line.split()
            dist, _, version = pin.partition("==")
            hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
            assert len(hashes) == len(options), f"images/{name}.lock: unexpected options in {line!r}"
            pins[dist.lower().replace("_", "-").replace(".", "-")] = (version, hashes)
    return pins


def lock(name: str) -> dict[str, str]:
    return {dist: version for dist, (version, _) in lock_hashes(name).items()}


@pytest.mark.parametrize("name", ["operator", "trainer", "build-tools"])
def test_every_pin_carries_its_wheel_hashes(name: str) -> None:
    """pip's hash-checking mode needs a hash for every requirement; a sha256 is 64 hex digits."""
    pins = lock_hashes(name)
    assert pins, f"images/{name}.lock is empty"
    for dist, (version, hashes) in pins.items():
        assert version and hashes, f"images/{name}.lock: {dist} has no --hash; fix: python images/lock.py --hashes-only"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (dist, hashes)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_image_builds_install_only_hashed_files(dockerfile: str) -> None:
    """Every pip command that fetches or installs a lock runs in hash-checking mode."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    commands = [c for c in re.split(r"&&|\n", text) if re.search(r"pip (download|install|--python \S+ install)", c)
                and ".lock" in c]
    assert len(commands) == 3, commands  # download, the tools' install, the venv's install
    assert all("--require-hashes" in c for c in commands), commands


@pytest.mark.parametrize("extra", ["operator", "trainer"])
def test_lock_satisfies_pyproject(extra: str) -> None:
    pins = lock(extra)
    for text in [*PROJECT["dependencies"], *PROJECT["optional-dependencies"][extra]]:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = req.name.lower().replace("_", "-").replace(".", "-")
        assert name in pins, f"images/{extra}.lock lacks {req.name}; fix: python images/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"images/{extra}.lock pins {name}=={pins[name]}, pyproject wants {req}; fix: python images/lock.py")
    assert "torch" not in lock("operator")


def test_version_and_image_names_agree() -> None:
    from kubetrain import __version__
    from kubetrain.controller.builders import DEFAULT_TRAINER_IMAGE

    operator_image, trainer_image = f"{REGISTRY}/operator:{VERSION}", f"{REGISTRY}/trainer:{VERSION}"
    chart = yaml.safe_load((REPO / "charts/kubetrain/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts/kubetrain/values.yaml").read_text())
    copies = {
        "operator/kubetrain/__init__.py __version__": __version__,
        "charts/kubetrain/Chart.yaml appVersion": chart["appVersion"],
        "charts/kubetrain/Chart.yaml version": chart["version"],
    }
    for dockerfile in ("Dockerfile", "trainer_image/Dockerfile"):
        found = re.search(r"^ARG VERSION=(\S+)$", (REPO / dockerfile).read_text(), re.M)
        copies[f"{dockerfile} ARG VERSION"] = found.group(1) if found else None
    wrong = {where: value for where, value in copies.items() if value != VERSION}
    assert not wrong, f"pyproject.toml says {VERSION}; fix these copies: {wrong}"

    # The chart and the kustomize manifests run exactly what images/build.sh tags.
    assert values["image"]["repository"] == f"{REGISTRY}/operator" and values["image"]["tag"] in ("", VERSION)
    assert values["image"]["pullPolicy"] == "IfNotPresent"
    assert values["trainerImage"] == trainer_image == DEFAULT_TRAINER_IMAGE
    (deployment,) = [d for d in yaml.safe_load_all((REPO / "manifests/deployment.yaml").read_text())
                     if d and d.get("kind") == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == operator_image and container["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETRAIN_TRAINER_IMAGE"] == trainer_image
    build = (REPO / "images/build.sh").read_text()
    assert f"REGISTRY={REGISTRY}\n" in build


def test_wheel_holds_every_subpackage(tmp_path: Path) -> None:
    """An editable install hides a package list that misses subpackages; the images' wheel does not."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("kubetrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in (REPO / "operator/kubetrain", REPO / "trainer_image/kubetrain_trainer"):
        for init in top.rglob("__init__.py"):
            module = init.relative_to(top.parent).as_posix()
            assert module in names, f"the wheel lacks {module}"
