"""tests/conftest.py under CI=true: every way a test can vanish from a run (a skip at run time or at
collection time, an xfail, a stale xfail mark that now passes) fails the run. Runs the repository's
conftest on a small generated suite in a child pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parents[2]

SUITE = {
    "test_importorskip.py": 'import pytest\npytest.importorskip("kubetrain_no_such_module")\n\n'
                            "def test_never_collected() -> None:\n    pass\n",
    "test_module_skip.py": 'import pytest\npytest.skip("not here", allow_module_level=True)\n',
    "test_outcomes.py": (
        "import pytest\n\n"
        '@pytest.mark.xfail(reason="known bug")\ndef test_xfail_mark() -> None:\n    assert False\n\n'
        '@pytest.mark.xfail(reason="stale mark")\ndef test_xpass() -> None:\n    pass\n\n'
        'def test_xfail_call() -> None:\n    pytest.xfail("imperative")\n\n'
        'def test_skip_call() -> None:\n    pytest.skip("at run time")\n\n'
        '@pytest.fixture\ndef gone() -> None:\n    pytest.skip("in a fixture")\n\n'
        "def test_skip_in_fixture(gone: None) -> None:\n    pass\n\n"
        "def test_passes() -> None:\n    pass\n"
    ),
}


def _run(tmp_path: Path, ci: str | None) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\n")
    for name, text in SUITE.items():
        (suite / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    junit = tmp_path / "junit.xml"
    # --continue-on-collection-errors: the run goes on so that every outcome can be read.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
         f"--junitxml={junit}", "--rootdir", str(suite), "-c", str(suite / "pytest.ini"), str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120,
    )
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('classname')}.{case.get('name')}".strip(".")] = kinds[0] if kinds else "passed"
    return result, outcomes


def test_under_ci_every_skip_and_xfail_fails_the_run(tmp_path: Path) -> None:
    result, outcomes = _run(tmp_path, "true")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert outcomes.pop("test_outcomes.test_passes") == "passed"
    # Each of the others is a failure (or a collection error), none a skip.
    assert outcomes == {
        "test_importorskip": "error", "test_module_skip": "error",
        "test_outcomes.test_xfail_mark": "failure", "test_outcomes.test_xpass": "failure",
        "test_outcomes.test_xfail_call": "failure", "test_outcomes.test_skip_call": "failure",
        "test_outcomes.test_skip_in_fixture": "error",
    }, out
    assert "skipped at collection under CI=true" in out and "kubetrain_no_such_module" in out
    assert "Skipped: not here" in out
    assert "xfail under CI=true (a known failure is still a failure): known bug" in out
    assert "xpass under CI=true (an xfail mark on a passing test is stale): stale mark" in out
    assert "skipped under CI=true (every tier must run in CI): Skipped: in a fixture" in out
    assert "xfailed" not in out.splitlines()[-1] and "skipped" not in out.splitlines()[-1], out


def test_without_ci_skips_and_xfails_are_reported_as_such(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, None)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in summary and "4 skipped" in summary and "2 xfailed" in summary, summary
    assert "1 xpassed" in summary, summary
