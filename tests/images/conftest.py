"""The images tier: the operator and trainer images built by images/build.sh (buildah, as root)
and run with runc. The first test that needs them runs images/build.sh, which returns in seconds
when the images are up to date (CI's images phase built them)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import tomllib

from tests.images.oci import ImageFacts, have_tools, inspect

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
REGISTRY = "ghcr.io/kubetrain"
# Lines for the end of the test log: image facts and build times.
REPORT: list[str] = []


def build(*args: str) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(["bash", "images/build.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, f"images/build.sh failed:\n{proc.stderr[-6000:]}"
    return time.monotonic() - start, proc.stderr


_built: dict[str, ImageFacts] = {}


def built(name: str) -> ImageFacts:
    """``ghcr.io/kubetrain/<name>:<version>``, built (or found up to date) by images/build.sh."""
    if name not in _built:
        why = have_tools()
        if why:
            pytest.skip(why)
        seconds, log = build("--only", name)
        REPORT.append(f"images/build.sh --only {name}: {seconds:.1f} s")
        REPORT.extend(f"  {line}" for line in log.splitlines() if "built in" in line or "up to date" in line)
        _built[name] = inspect(f"{REGISTRY}/{name}:{VERSION}")
        REPORT.append(_built[name].describe())
    return _built[name]


@pytest.fixture(scope="session")
def operator_image() -> ImageFacts:
    return built("operator")


@pytest.fixture(scope="session")
def trainer_image() -> ImageFacts:
    return built("trainer")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("images")
        for line in REPORT:
            terminalreporter.write_line(line)
