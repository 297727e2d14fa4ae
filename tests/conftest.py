"""Shared test configuration. With CI=true a skipped test fails the run: no tier may be
silently skipped in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport):  # type: ignore[no-untyped-def]
    if os.environ.get("CI", "").lower() == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI=true (every tier must run in CI): {reason}"
    yield


@pytest.fixture
def repo() -> Path:
    return REPO
