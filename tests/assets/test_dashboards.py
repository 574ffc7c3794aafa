"""The Grafana dashboards in grafana/dashboards/ and their provisioning.

No Grafana server can run here, so every query is checked the way Grafana would send it:
macros and template variables substituted, then parsed by promtool; and every metric
name it selects must be one asgi_observe (or prometheus_client's default collectors, or
Prometheus itself) produces. The explicit list of those names is compared with what
the library really registers.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from asgi_observe import MetricsMiddleware
from asgi_observe.health import HealthApp
from asgi_observe.metrics.app import AppMetrics
from asgi_observe.metrics.system import register_system_metrics
from asgi_observe.types import Receive, Scope, Send
from tests.assets.promql import (
    CLIENT_DEFAULT_METRICS,
    COMPOSE_DIR,
    DASHBOARD_DIR,
    DASHBOARDS,
    GRAFANA_DIR,
    KNOWN_METRICS,
    LIBRARY_METRICS,
    VARIABLE_SAMPLES,
    all_panels,
    every_query,
    load,
    metric_names,
    promtool_check_exprs,
    queries,
    substitute,
    variable_names,
    variables,
)
from tests.support import require_binary

PROVISIONING = GRAFANA_DIR / "provisioning"
MACROS = ("$__rate_interval", "$__interval", "$__range")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_json_with_the_expected_shape(name: str) -> None:
    dashboard = load(name)
    assert dashboard["title"] == DASHBOARDS[name]
    assert dashboard["uid"]
    assert len(dashboard["uid"]) <= 40  # Grafana's limit
    assert dashboard["id"] is None  # provisioning assigns ids
    assert isinstance(dashboard["schemaVersion"], int)
    assert "baliblissed" in dashboard["tags"]


def test_dashboard_uids_are_unique() -> None:
    uids = [load(name)["uid"] for name in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique_and_panels_are_complete(name: str) -> None:
    dashboard = load(name)
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), f"duplicate panel titles in {name}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["datasource"]["uid"], panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_only_use_defined_variables(name: str) -> None:
    dashboard = load(name)
    defined = set(variables(dashboard))
    for where, expr in queries(dashboard):
        missing = variable_names(expr) - defined
        assert not missing, f"{name} {where} uses undefined variables {sorted(missing)}"
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] != "row":
            uid = panel["datasource"]["uid"]
            assert uid == "${datasource}" or uid in {"prometheus"}, panel["title"]
    assert variables(dashboard)["datasource"]["query"] == "prometheus"


def test_every_query_parses_with_promtool() -> None:
    promtool = require_binary("promtool")
    found = every_query()
    assert len(found) > 60
    exprs = [substitute(expr, VARIABLE_SAMPLES) for _, expr in found]
    result = promtool_check_exprs(promtool, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(http_requests_total[$__rate_interval])",  # unbalanced parenthesis
        "rate(http_requests_total{handler=~$handler}[5m])",  # unquoted variable
        "sum by (le) rate(http_requests_total[5m])",  # missing parentheses
        "rate(http_requests_total[$undefined_var])",  # unknown variable stays in
    ],
)
def test_promtool_check_rejects_a_broken_query(expr: str) -> None:
    """The check has teeth: one bad expression among good ones fails it."""
    promtool = require_binary("promtool")
    good = "sum(rate(http_requests_total[$__rate_interval]))"
    result = promtool_check_exprs(promtool, [substitute(e, VARIABLE_SAMPLES) for e in (good, expr)])
    assert result.returncode != 0


def test_macros_and_variables_are_substituted() -> None:
    expr = 'rate(x{job=~"$job",h=~"${handler:regex}"}[$__rate_interval]) + y[$__range] + z[[job]]'
    assert substitute(expr, VARIABLE_SAMPLES) == (
        'rate(x{job=~"baliblissed-backend",h=~"/destinations/{slug}"}[1m]) + y[1h] + z'
        "baliblissed-backend"
    )
    assert variable_names(expr) == {"job", "handler"}


def test_every_query_selects_only_metrics_the_library_exposes() -> None:
    for where, expr in every_query():
        names = metric_names(substitute(expr, VARIABLE_SAMPLES))
        assert names, f"{where}: selects no metric"
        unknown = names - KNOWN_METRICS
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)}"


def test_dashboards_cover_the_seed_metrics() -> None:
    used = set().union(
        *(metric_names(substitute(expr, VARIABLE_SAMPLES)) for _, expr in every_query())
    )
    seed = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_request_size_bytes_bucket",
        "http_response_size_bytes_bucket",
        "http_requests_in_progress",
        "health_check_status",
        "health_check_duration_seconds",
        "baliblissed_cache_hits_total",
        "baliblissed_cache_misses_total",
        "baliblissed_ai_requests_total",
        "baliblissed_ai_request_duration_seconds_bucket",
        "baliblissed_ai_tokens_used_total",
        "baliblissed_circuit_breaker_state",
        "baliblissed_rate_limit_hits_total",
        "baliblissed_system_cpu_percent",
        "baliblissed_system_memory_percent",
        "baliblissed_system_disk_percent",
        "process_resident_memory_bytes",
        "process_open_fds",
    }
    assert seed <= used, sorted(seed - used)


def _sample_names(registry: CollectorRegistry) -> set[str]:
    """Series names a scrape of `registry` can produce, from its `# TYPE` lines, so
    labelled families that have no child yet count too."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count"),
        "info": ("",),
        "untyped": ("",),
    }
    names: set[str] = set()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in suffixes[kind])
    return names


async def test_known_metric_list_matches_what_the_library_registers() -> None:
    """The explicit list the name checks use is what asgi_observe really exposes."""
    registry = CollectorRegistry()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = MetricsMiddleware(endpoint, registry=registry)
    health = HealthApp({"database": lambda: True}, registry=registry)
    AppMetrics("baliblissed", registry=registry)
    register_system_metrics(registry, namespace="baliblissed")
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).status_code == 204
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=health), base_url="http://test"
    ) as client:
        assert (await client.get("/ready")).status_code == 200

    produced = _sample_names(registry)
    missing = (LIBRARY_METRICS | CLIENT_DEFAULT_METRICS) - produced
    assert not missing, f"listed in tests/assets/promql.py but not produced: {sorted(missing)}"


def test_datasources_are_provisioned_with_exemplar_links() -> None:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    sources = {source["uid"]: source for source in document["datasources"]}
    prometheus = sources["prometheus"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["isDefault"] is True
    jaeger = sources["jaeger"]
    assert jaeger["type"] == "jaeger"
    assert jaeger["url"] == "http://jaeger:16686"
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # MetricsMiddleware attaches exemplars as {trace_id="..."}.
    assert destinations == [{"name": "trace_id", "datasourceUid": "jaeger"}]
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text())
    for source in sources.values():
        host = source["url"].split("//", 1)[1].split(":", 1)[0]
        assert host in compose["services"], source["name"]
    # Dashboards default to the provisioned Prometheus.
    for name in DASHBOARDS:
        assert variables(load(name))["datasource"]["current"]["value"] == "prometheus"


def test_dashboard_provider_loads_the_mounted_directory_into_the_folder() -> None:
    document = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    [provider] = document["providers"]
    assert provider["folder"] == "BaliBlissed"
    assert provider["type"] == "file"
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (COMPOSE_DIR / source).resolve()
    assert mounts[provider["options"]["path"]] == DASHBOARD_DIR
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    assert {path.name for path in DASHBOARD_DIR.glob("*.json")} == set(DASHBOARDS)


def test_latency_panels_show_exemplars() -> None:
    """Exemplars are what turn a latency spike into a click-through to its trace."""
    latency_targets = [
        (panel["title"], target)
        for name in DASHBOARDS
        for panel in all_panels(load(name)["panels"])
        if panel["type"] in {"timeseries", "heatmap"}  # stat panels cannot draw them
        for target in panel.get("targets", [])
        if "_duration_seconds_bucket" in target.get("expr", "")
    ]
    assert len(latency_targets) >= 5
    for title, target in latency_targets:
        assert target.get("exemplar") is True, f"panel {title!r} hides exemplars"


def test_circuit_breaker_panels_map_states_to_names() -> None:
    panels = [
        panel
        for panel in all_panels(load("application.json")["panels"])
        if any("circuit_breaker_state" in t.get("expr", "") for t in panel.get("targets", []))
    ]
    assert len(panels) == 2
    for panel in panels:
        [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
        texts = {value: option["text"] for value, option in mapping["options"].items()}
        assert texts == {"0": "closed", "1": "open", "2": "half-open"}, panel["title"]


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("fastapi-overview.json", "handler"),
        ("fastapi-overview.json", "job"),
        ("infrastructure.json", "check"),
        ("application.json", "request_type"),
    ],
)
def test_template_variables_filter_the_panels(name: str, variable: str) -> None:
    dashboard = load(name)
    assert variables(dashboard)[variable]["type"] == "query"
    users = [where for where, expr in queries(dashboard) if variable in variable_names(expr)]
    assert len(users) >= 2, f"${variable} is defined but filters almost nothing"


def test_dashboard_files_are_canonical_json() -> None:
    """Stable formatting keeps diffs of exported dashboards reviewable."""
    for name in DASHBOARDS:
        path: Path = DASHBOARD_DIR / name
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", name
