"""Shared test configuration. With CI=true a skipped test fails the run: no tier may be
silently skipped in CI. That covers skips at run time (a test or fixture calling
`pytest.skip`, a `skipif` mark), skips at collection time (module-level `pytest.skip` or
`pytest.importorskip`: the whole module would vanish from the run) and xfail outcomes (an
`xfail` mark or `pytest.xfail` hides a failure; an unexpected pass hides a stale mark)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _reason(longrepr: object) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport):  # type: ignore[no-untyped-def]
    if _ci():
        wasxfail = getattr(report, "wasxfail", None)
        if wasxfail is not None and report.skipped:
            report.outcome = "failed"
            report.longrepr = f"xfail under CI=true (a known failure is still a failure): {wasxfail}"
            del report.wasxfail  # otherwise the terminal reports it as "xfailed" again
        elif wasxfail is not None and report.passed and report.when == "call":
            report.outcome = "failed"
            report.longrepr = f"xpass under CI=true (an xfail mark on a passing test is stale): {wasxfail}"
            del report.wasxfail
        elif report.skipped:
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true (every tier must run in CI): {_reason(report.longrepr)}"
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_collectreport(report: pytest.CollectReport):  # type: ignore[no-untyped-def]
    if _ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = (f"{report.nodeid} skipped at collection under CI=true (module-level skip or "
                           f"importorskip; every tier must run in CI): {_reason(report.longrepr)}")
    yield


@pytest.fixture
def repo() -> Path:
    return REPO
