"""The chart's `logFormat` reaches the operator: $KUBETRAIN_LOG_FORMAT (what the chart's
Deployment sets) chooses JSON lines (time, level, logger, message) or plain text."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubetrain.cli import build_parser
from kubetrain.cli.operator import ENV_LOG_FORMAT, configure_logging
from kubetrain.controller.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _parse(monkeypatch: pytest.MonkeyPatch, env: str | None, *argv: str) -> str:
    if env is None:
        monkeypatch.delenv(ENV_LOG_FORMAT, raising=False)
    else:
        monkeypatch.setenv(ENV_LOG_FORMAT, env)
    return str(build_parser("operator").parse_args(["operator", "-A", *argv]).log_format)


def test_the_chart_sets_the_variable_the_operator_reads() -> None:
    deployment = (REPO / "charts" / "kubetrain" / "templates" / "deployment.yaml").read_text()
    assert f"- name: {ENV_LOG_FORMAT}\n              value: {{{{ .Values.logFormat | quote }}}}" in deployment
    values = yaml.safe_load((REPO / "charts" / "kubetrain" / "values.yaml").read_text())
    assert values["logFormat"] == "json"


def test_the_environment_chooses_the_format_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse(monkeypatch, None) == "json"
    assert _parse(monkeypatch, "plain") == "plain"
    assert _parse(monkeypatch, "plain", "--log-format", "json") == "json"


def test_json_lines_carry_time_level_logger_message(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    log = logging.getLogger("kubetrain.operator")
    log.info("reconcile workers started", extra={"workers": 8})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("pass failed")
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2, lines  # one object per line, the traceback inside it
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["level"] == "info" and first["logger"] == "kubetrain.operator"
    assert first["message"] == "reconcile workers started" and first["workers"] == 8
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "RuntimeError: boom" in second["exception"]


def test_plain_lines_are_text(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("plain")
    logging.getLogger("kubetrain.operator").warning("no progress from %s", "job-0")
    (line,) = capfd.readouterr().err.splitlines()
    assert line.endswith(" WARNING kubetrain.operator: no progress from job-0")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_kopf_per_object_messages_name_the_job() -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, "handled", None, None)
    record.k8s_ref = {"namespace": "ml", "name": "gpt"}
    assert json.loads(JsonFormatter().format(record))["job"] == "ml/gpt"


def test_a_bad_format_in_the_environment_is_refused() -> None:
    env = {"PATH": "/usr/bin:/bin", ENV_LOG_FORMAT: "xml", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "kubetrain", "operator", "-A", "--metrics-port", "0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "KUBETRAIN_LOG_FORMAT='xml'" in out.stderr
