"""Many instances, one view: two instances of the example behind one real Prometheus.

Every dashboard panel must aggregate across instances as its title says (rates summed,
quantiles from summed buckets, worst instance for max/min), or show one series per
instance when its legend names the instance. The request totals equal exactly what was
sent to both, and the alert expressions aggregate the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.assets.promql import DASHBOARDS, REPO, alert_rules, all_panels, load, substitute
from tests.deploy.promql_checks import check_aggregates_across, label_values, query_at, restrict
from tests.support import (
    Prometheus,
    free_port,
    http_get,
    run_prometheus,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

# A handler has an in-progress series only while it serves a request.
MAY_BE_EMPTY = {"In-progress requests by handler"}
ALL = ".+"
HTTP_ALERTS = {"HighErrorRate", "HighP99Latency", "HighP95Latency"}


@dataclass
class Instance:
    url: str
    metrics_target: str
    sent: int = 0
    limited: int = 0

    def request(self, path: str, body: dict[str, object] | None = None) -> int:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status: int = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        self.sent += 1
        return status


@contextlib.contextmanager
def example(tmp_path: Path, name: str, *, ai_failure: bool) -> Iterator[Instance]:
    """`uvicorn --factory examples.baliblissed:create_app`, metrics on their own port."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ENVIRONMENT": "production",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / name}.sqlite3",
        "METRICS_INTERNAL_PORT": str(metrics_port),
        "METRICS_INTERNAL_HOST": "127.0.0.1",
        "BALIBLISSED_AI_FAILURE": "true" if ai_failure else "false",
    }
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "PROMETHEUS_MULTIPROC_DIR", "REDIS_URL"):
        env.pop(variable, None)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "examples.baliblissed:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    instance = Instance(f"http://127.0.0.1:{port}", f"127.0.0.1:{metrics_port}")

    def live() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return http_get(instance.url + "/health/live", timeout=1)[0] == 200
        except OSError:
            return False

    try:
        wait_until(live, timeout=30, what=f"instance {name}", interval=0.1)
        instance.sent += 1  # the liveness poll that answered 200 is a counted request
        yield instance
    finally:
        stop_process(process, timeout=15, kill_timeout=5)


def drive(a: Instance, b: Instance) -> None:
    """Different traffic on each instance, so sums, maxima and quantiles all differ."""
    for _ in range(30):
        assert a.request("/destinations/ubud") == 200
    for _ in range(5):
        assert a.request("/destinations/atlantis") == 404
    # The example allows 20 itineraries per client and minute: the second round of 11
    # runs into the rate limit.
    for days in range(1, 12):
        status = a.request("/itineraries", {"destination": "ubud", "days": days})
        assert status in {201, 429}
        a.limited += status == 429
    for _ in range(12):
        assert b.request("/destinations") == 200
    for days in (1, 2, 3, 4):
        assert b.request("/itineraries", {"destination": "canggu", "days": days}) == 503
    for instance in (a, b):
        assert instance.request("/health/ready") == 200


def total_by_instance(prometheus: Prometheus) -> dict[str, float]:
    vector = prometheus.vector('sum by (instance) (http_requests_total{job="app"})')
    return {item["metric"]["instance"]: float(item["value"][1]) for item in vector}


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(where, legend, expr) for every target of every panel."""
    for name in DASHBOARDS:
        for panel in all_panels(load(name)["panels"]):
            for target in panel.get("targets", []):
                where = f"{name}: {panel['title']!r} {target['refId']}"
                yield where, target.get("legendFormat", ""), target["expr"]


def test_two_instances_one_prometheus_every_panel_aggregates(tmp_path: Path) -> None:
    with (
        example(tmp_path, "a", ai_failure=False) as a,
        example(tmp_path, "b", ai_failure=True) as b,
        run_prometheus([a.metrics_target, b.metrics_target]) as prometheus,
    ):
        targets = [a.metrics_target, b.metrics_target]
        # Both scraped before the traffic, so every counter is seen rising.
        prometheus.wait_for('count(up{job="app"} == 1) == 2', timeout=30)
        wait_until(
            lambda: set(total_by_instance(prometheus)) == set(targets),
            timeout=15,
            what="request counters of both instances",
            interval=0.25,
        )
        # Two rounds, each scraped before the next: every series is seen rising.
        for _ in range(2):
            drive(a, b)
            expected = {a.metrics_target: float(a.sent), b.metrics_target: float(b.sent)}
            wait_until(
                lambda: total_by_instance(prometheus) == expected,  # noqa: B023 - polled now
                timeout=20,
                what=f"counters to reach {expected}",
                interval=0.25,
            )
        assert a.limited == 2
        # Series born in the last round (the rate-limit counter) need two samples for rate().
        for name in ("baliblissed_rate_limit_hits_total", "http_requests_total"):
            prometheus.wait_for(f'min(count_over_time({name}{{job="app"}}[1m])) >= 2', timeout=15)
        at = time.time()

        def evaluate(promql: str) -> dict[frozenset[tuple[str, str]], float]:
            return query_at(prometheus, promql, at)

        # The totals are exactly what was sent to both instances.
        total = evaluate('sum(http_requests_total{job="app"})')
        assert list(total.values()) == [float(a.sent + b.sent)]
        in_window = evaluate('sum(increase(http_requests_total{job="app"}[1m]))')
        assert next(iter(in_window.values())) > 0

        samples = {"job": "app", "instance": ALL, "handler": ALL, "check": ALL,
                   "request_type": ALL, "breaker": ALL}  # fmt: skip
        failures, checked = [], 0
        for where, legend, expr in panel_queries():
            promql = substitute(expr, samples)
            result = evaluate(promql)
            if not result:
                if not any(title in where for title in MAY_BE_EMPTY):
                    failures.append(f"{where}: empty result: {promql}")
                continue
            verdict = check_aggregates_across(evaluate, promql, targets)
            if verdict == "per-instance":
                if "{{instance}}" not in legend:
                    failures.append(f"{where}: one series per instance, legend {legend!r}")
                elif label_values(result, "instance") != set(targets):
                    failures.append(f"{where}: not every instance shown")
            elif verdict is not None:
                failures.append(f"{where}: {verdict}")
            checked += 1
        assert not failures, "\n".join(failures)
        assert checked >= len(list(panel_queries())) - len(MAY_BE_EMPTY) > 50

        # The checks have teeth: queries that average, or take quantiles of buckets not
        # summed, are refused although Prometheus answers them.
        broken = {
            "averaged rates": 'avg(rate(http_requests_total{job="app"}[1m]))',
            "max buckets": "histogram_quantile(0.5, max by (le) "
            '(rate(http_request_duration_seconds_bucket{job="app"}[1m])))',
        }
        for why, promql in broken.items():
            assert evaluate(promql), why
            verdict = check_aggregates_across(evaluate, promql, targets)
            assert verdict not in (None, "per-instance"), why

        # Alerts: request-level alerts aggregate per job like the panels; the others
        # name the instance that is down, failing or saturated.
        for rule in alert_rules():
            condition = re.sub(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.]+\s*$", "", str(rule["expr"]))
            verdict = check_aggregates_across(evaluate, condition.strip(), targets)
            if rule["alert"] in HTTP_ALERTS:
                assert verdict is None, f"{rule['alert']}: {verdict}"
                assert label_values(evaluate(condition), "job") == {"app"}, rule["alert"]
            else:
                assert verdict == "per-instance", f"{rule['alert']}: {verdict}"
                assert label_values(evaluate(condition), "instance") == set(targets)
        # The error-rate alert sees B's failures diluted by A's successes, as one service.
        error_rate = str(alert_rules()[0]["expr"]).rsplit(">", 1)[0]
        (combined,) = evaluate(error_rate).values()
        (b_alone,) = evaluate(restrict(error_rate, b.metrics_target)).values()
        assert 0 < combined < b_alone
