"""Helpers for the asset tests: the metric names asgi_observe produces, name extraction
from PromQL, Grafana macro substitution, validation with promtool, and reading every
query out of the alert rules and the dashboards.

The deployable assets (alert rules, Grafana dashboards) are only useful if every query
parses and names a series the library really exposes; a typo in either shows up as an
empty panel or an alert that can never fire, long after the change was merged.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
PROMETHEUS_DIR = COMPOSE_DIR / "prometheus"
GRAFANA_DIR = REPO / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"


def _histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


# Every series name the dashboards and alerts may query. Kept explicit, and compared with
# what the library really registers in tests/assets/test_dashboards.py, so a renamed
# family breaks a test here rather than a dashboard in production.
HTTP_METRICS = {
    "http_requests_total",
    *_histogram("http_request_duration_seconds"),
    *_histogram("http_request_size_bytes"),
    *_histogram("http_response_size_bytes"),
    "http_requests_in_progress",
}
HEALTH_METRICS = {"health_check_status", "health_check_duration_seconds"}
APP_METRICS = {
    "baliblissed_cache_hits_total",
    "baliblissed_cache_misses_total",
    "baliblissed_ai_requests_total",
    "baliblissed_ai_request_failures_total",
    *_histogram("baliblissed_ai_request_duration_seconds"),
    "baliblissed_ai_tokens_used_total",
    "baliblissed_circuit_breaker_state",
    "baliblissed_rate_limit_hits_total",
}
SYSTEM_METRICS = {
    "baliblissed_system_cpu_percent",
    "baliblissed_system_memory_percent",
    "baliblissed_system_disk_percent",
    "baliblissed_system_process_resident_memory_bytes",
    "baliblissed_system_process_open_fds",
    "baliblissed_system_process_threads",
}
# prometheus_client's default collectors (ProcessCollector, PlatformCollector, GCCollector)
# on the global registry, which `instrument()` uses unless given another one.
CLIENT_DEFAULT_METRICS = {
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
}
# Written by Prometheus itself for every scrape target.
PROMETHEUS_SYNTHETIC_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

LIBRARY_METRICS = HTTP_METRICS | HEALTH_METRICS | APP_METRICS | SYSTEM_METRICS
KNOWN_METRICS = LIBRARY_METRICS | CLIENT_DEFAULT_METRICS | PROMETHEUS_SYNTHETIC_METRICS

# Values standing in for Grafana's macros and template variables, so an expression can be
# handed to promtool exactly as Grafana would send it to Prometheus.
GRAFANA_MACROS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
}
VARIABLE_SAMPLES = {
    "job": "baliblissed-backend",
    "instance": "backend:8000",
    "handler": "/destinations/{slug}",
    "check": "database",
    "request_type": "itinerary",
    "breaker": "ai_circuit_breaker",
    "datasource": "prometheus",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana macros and `$var` / `${var}` / `${var:fmt}` / `[[var]]` references.

    Unknown names are left in place: the `$` then makes promtool reject the expression,
    which is the point.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in GRAFANA_MACROS:
            return GRAFANA_MACROS[name]
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def variable_names(expr: str) -> set[str]:
    """Every template variable `expr` refers to (macros excluded)."""
    found = set()
    for match in _VARIABLE.finditer(expr):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in GRAFANA_MACROS:
            found.add(name)
    return found


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
     "group_right", "offset", "inf", "nan", "atan2"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, labels, keywords excluded).

    A lexical scan, not a parser: strings, label matchers, ranges and grouping clauses are
    removed first, then an identifier not followed by `(` is a metric name. promtool has
    already proved the expression parses, which is what makes this enough. A selector
    written as `{__name__="x"}` is reported through its `__name__` matcher.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def variable_query_expr(query: str) -> str | None:
    """The PromQL inside a Prometheus template-variable query, or None if it has none.

    `label_values(selector, label)` → the selector; `query_result(expr)` → expr;
    `label_values(label)`, `label_names()` and `metrics(regex)` carry no expression.
    """
    query = query.strip()
    found = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", query, re.DOTALL)
    if found:
        return found.group(1).strip()
    found = re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL)
    if found:
        return found.group(1).strip()
    return None


def promtool_check_exprs(promtool: str, exprs: Iterable[str]) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on one recording rule per expression (offline parse)."""
    rules = [{"record": f"asset:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    document = {"groups": [{"name": "assets", "rules": rules}]}
    with tempfile.TemporaryDirectory(prefix="asgi-observe-promql-") as workdir:
        path = Path(workdir) / "exprs.yml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return subprocess.run(
            [promtool, "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def alert_rules() -> list[dict[str, object]]:
    """Every rule of compose/prometheus/alerts.yml, in file order."""
    document = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# --- Grafana dashboards -----------------------------------------------------------------

DASHBOARDS = {
    "fastapi-overview.json": "FastAPI Overview",
    "infrastructure.json": "Infrastructure",
    "application.json": "Application",
}


def load(name: str) -> dict[str, Any]:
    """One dashboard of grafana/dashboards/, parsed."""
    document: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text())
    return document


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every template-variable query."""
    found: list[tuple[str, str]] = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for name, variable in variables(dashboard).items():
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        expr = variable_query_expr(text)
        assert expr is not None, f"variable {name}: unsupported query {text!r}"
        found.append((f"variable {name}", expr))
    return found


def every_query() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of every dashboard, `where` naming the file."""
    return [
        (f"{name}: {where}", expr) for name in DASHBOARDS for where, expr in queries(load(name))
    ]
