"""The chart's PrometheusRule: `promtool check rules` on its groups, and `promtool test rules`
(tests/observability/alerts_test.yaml): each alert fires on a broken synthetic job and stays
silent on healthy ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.observability.conftest import ALL_ON, docs, helm_template, rule_groups

HERE = Path(__file__).resolve().parent
ALERTS = ("KubetrainJobStalled", "KubetrainLossNotFinite", "KubetrainJobRestartingOften", "KubetrainJobPending",
          "KubetrainCheckpointOverdue", "KubetrainOperatorDown")


def _write(tmp: Path, groups: dict[str, Any]) -> Path:
    (tmp / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp / "alerts_test.yaml")
    return tmp / "rules.yaml"


def test_promtool_check_rules(rendered_all: list[dict[str, Any]], promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(rendered_all)
    names = [r["alert"] for g in groups["groups"] for r in g["rules"]]
    assert sorted(names) == sorted(ALERTS)
    rules = _write(tmp_path, groups)
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout + out.stderr


def test_promtool_unit_tests_fire_and_stay_silent(rendered_all: list[dict[str, Any]], promtool: str,
                                                  tmp_path: Path) -> None:
    _write(tmp_path, rule_groups(rendered_all))
    tested = {t["alertname"] for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(ALERTS), "every alert needs a case where it fires"
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_the_unit_tests_catch_a_wrong_threshold(helm: str, promtool: str, tmp_path: Path) -> None:
    """The unit tests are not vacuous: with stalledMinutes=60 the stalled job does not fire at
    25 minutes, and promtool reports exactly that case."""
    objects = docs(helm_template(helm, *ALL_ON, "prometheusRule.stalledMinutes=60").stdout)
    _write(tmp_path, rule_groups(objects))
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "KubetrainJobStalled" in text and "FAILED" in text
