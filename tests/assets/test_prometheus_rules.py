"""The Prometheus configuration and alert rules shipped in compose/prometheus/.

promtool (Debian's `prometheus` package, installed by `make test`) validates the config
offline, parses the rules and runs the alert unit tests in alerts_test.yml; the rest
checks what promtool cannot know: the rules name metrics the library exposes, every
alert is tested both firing and silent, and every runbook link resolves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.assets.promql import (
    KNOWN_METRICS,
    PROMETHEUS_DIR,
    REPO,
    alert_rules,
    metric_names,
)
from tests.support import require_binary

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
EXPECTED_ALERTS = {
    "HighErrorRate",
    "HighP99Latency",
    "HighP95Latency",
    "TargetDown",
    "ReadinessFailing",
    "CircuitBreakerOpen",
    "HighMemory",
    "HighCPU",
    "DiskAlmostFull",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_promtool_accepts_the_config_offline() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # rule_files is resolved relative to the config file, so this proves alerts.yml is found.
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare labels and annotations exactly: a drifted threshold in the
    description must make them fail, or they prove nothing."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    text = ALERTS_TEST.read_text()
    broken = text.replace(
        "P99 request latency of backend is 3.98s", "P99 request latency of backend is 4s"
    )
    assert broken != text
    (tmp_path / "alerts_test.yml").write_text(broken)
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "HighP99Latency" in result.stdout + result.stderr


def test_the_expected_alerts_exist_with_severity_and_annotations() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        assert labels["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        assert "for" in rule, f"{rule['alert']} would page on a single bad evaluation"


def test_seed_thresholds_are_kept() -> None:
    """The seed documents "error rate > 5%, P99 latency > 2s"."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    error_rate = str(rules["HighErrorRate"]["expr"])
    assert re.search(r'status=~"5\.\."', error_rate)
    assert re.search(r">\s*0\.05\s*$", error_rate.strip())
    assert rules["HighErrorRate"]["for"] == "5m"
    p99 = str(rules["HighP99Latency"]["expr"])
    assert "histogram_quantile(0.99" in p99
    assert "http_request_duration_seconds_bucket" in p99
    assert re.search(r">\s*2\s*$", p99.strip())


def test_every_alert_is_tested_firing_and_silent() -> None:
    document = load(ALERTS_TEST)
    assert document["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_alert_rules_query_only_metrics_the_library_exposes() -> None:
    for rule in alert_rules():
        names = metric_names(str(rule["expr"]))
        assert names, rule["alert"]
        unknown = names - KNOWN_METRICS
        assert not unknown, f"{rule['alert']} queries unknown metrics {sorted(unknown)}"


def test_runbook_hints_point_at_sections_of_the_docs() -> None:
    docs = (REPO / "docs" / "dashboards.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", docs, re.MULTILINE)
    }
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        found = re.match(r"docs/dashboards\.md#([\w-]+)", str(annotations["runbook"]))
        assert found, rule["alert"]
        assert found.group(1) in anchors, f"no section #{found.group(1)} in docs/dashboards.md"


def test_prometheus_scrapes_the_service_and_itself() -> None:
    config = load(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    backend = jobs["baliblissed-backend"]
    assert backend.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in backend["static_configs"] for t in sc["targets"]] == ["backend:8000"]
    own = [t for sc in jobs["prometheus"]["static_configs"] for t in sc["targets"]]
    assert own == ["localhost:9090"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum(rate(http_requests_total{status=~"5.."}[5m])) by (job)', {"http_requests_total"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))",
            {"http_request_duration_seconds_bucket"},
        ),
        ("time() - process_start_time_seconds offset 5m", {"process_start_time_seconds"}),
        ("a / on (job) group_left(instance) b > bool 1e-3", {"a", "b"}),
        ('{__name__="up", job="x"} == 0', {"up"}),
        ("(sum(x_total) or vector(0)) * 100", {"x_total"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    """The lexical scan the name checks rely on: functions, labels, keywords and numbers
    are not metric names."""
    assert metric_names(expr) == expected
