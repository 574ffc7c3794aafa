"""The PrometheusRule's groups through promtool: they parse, and the alert unit tests of
compose/prometheus/alerts_test.yml pass against them (not only against alerts.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.assets.promql import PROMETHEUS_DIR
from tests.deploy.manifests import find
from tests.support import require_binary

pytestmark = pytest.mark.realparts


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def write_rule_groups(directory: Path) -> Path:
    """The PrometheusRule's spec as a Prometheus rule file named like the one it replaces."""
    spec = find("PrometheusRule", "baliblissed-backend")["spec"]
    path = directory / "alerts.yml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


def test_promtool_accepts_the_prometheus_rule_groups(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(write_rule_groups(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_alert_unit_tests_pass_against_the_prometheus_rule(tmp_path: Path) -> None:
    write_rule_groups(tmp_path)
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_fail_when_a_group_drifts(tmp_path: Path) -> None:
    """The unit tests do look at the rules: a changed threshold makes them fail."""
    path = write_rule_groups(tmp_path)
    path.write_text(path.read_text().replace("> 0.05", "> 0.5"))
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "HighErrorRate" in result.stdout + result.stderr
