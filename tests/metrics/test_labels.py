"""Custom labels, excluded methods and the prometheus-fastapi-instrumentator layout."""

from __future__ import annotations

import functools
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import MetricsMiddleware, Settings, instrument
from asgi_observe.types import ASGIApp, Scope
from tests.metrics.helpers import label_values, value
from tests.support import run_prometheus, run_uvicorn, wait_until


async def item(request: Request) -> PlainTextResponse:
    if request.path_params["item_id"] == "missing":
        return PlainTextResponse("no", status_code=404)
    return PlainTextResponse("item")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item, methods=["GET", "POST"])])


def tenant(scope: Scope) -> str | None:
    for name, header in scope.get("headers", ()):
        if name == b"x-tenant":
            return str(header.decode("latin-1"))
    return None


async def get(app: ASGIApp, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


async def test_dynamic_labels_go_on_requests_latency_and_in_progress(
    registry: CollectorRegistry,
) -> None:
    app = MetricsMiddleware(starlette_app(), registry=registry, labels={"tenant": tenant})
    await get(app, "/items/1", **{"x-tenant": "acme"})
    await get(app, "/items/2", **{"x-tenant": "acme"})
    await get(app, "/items/3", **{"x-tenant": "globex"})
    await get(app, "/items/4")  # no header: the label is ""
    labels = {"method": "GET", "status": "200", "handler": "/items/{item_id}"}
    assert value(registry, "http_requests_total", **labels, tenant="acme") == 2
    assert value(registry, "http_requests_total", **labels, tenant="globex") == 1
    assert value(registry, "http_requests_total", **labels, tenant="") == 1
    assert (
        value(
            registry,
            "http_request_duration_seconds_count",
            method="GET",
            handler="/items/{item_id}",
            tenant="acme",
        )
        == 2
    )
    # The in-progress gauge carries it too: read while a request is being served.
    seen: list[set[str]] = []

    async def scraping(request: Request) -> PlainTextResponse:
        seen.append(label_values(registry, "http_requests_in_progress", "tenant"))
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/slow/{n}", scraping)])
    watched = MetricsMiddleware(inner, registry=registry, labels={"tenant": tenant})
    await get(watched, "/slow/1", **{"x-tenant": "initech"})
    assert seen == [{"initech"}]
    # ...and the size histograms do not: they are per handler only.
    assert label_values(registry, "http_request_size_bytes_count", "tenant") == set()


async def test_label_values_are_bounded(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(
        starlette_app(), registry=registry, labels={"tenant": tenant}, max_label_values=5
    )
    for number in range(20):
        await get(app, "/items/1", **{"x-tenant": f"t{number}"})
    values = label_values(registry, "http_requests_total", "tenant")
    assert values == {"t0", "t1", "t2", "t3", "t4", "other"}
    assert (
        value(
            registry,
            "http_requests_total",
            method="GET",
            status="200",
            handler="/items/{item_id}",
            tenant="other",
        )
        == 15
    )


async def test_a_raising_label_gives_empty_and_the_request_goes_on(
    registry: CollectorRegistry,
) -> None:
    def broken(scope: Scope) -> str | None:
        raise RuntimeError("a bug in the user's label")

    app = MetricsMiddleware(starlette_app(), registry=registry, labels={"plan": broken})
    response = await get(app, "/items/1")
    assert response.status_code == 200
    assert label_values(registry, "http_requests_total", "plan") == {""}


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        ({"handler": tenant}, "clash with the built-in labels"),
        ({"status": tenant}, "clash with the built-in labels"),
        ({"user_id": tenant}, "unbounded or personal"),
        ({"email": tenant}, "unbounded or personal"),
        ({"9tenant": tenant}, "invalid label name"),
    ],
)
def test_refused_label_names(labels: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        MetricsMiddleware(starlette_app(), registry=CollectorRegistry(), labels=labels)


def test_a_label_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a callable"):
        MetricsMiddleware(
            starlette_app(),
            registry=CollectorRegistry(),
            labels={"tenant": "acme"},  # type: ignore[dict-item]
        )


def test_const_labels_clashing_with_dynamic_ones_are_refused() -> None:
    with pytest.raises(ValueError, match="clash"):
        MetricsMiddleware(
            starlette_app(),
            registry=CollectorRegistry(),
            labels={"team": tenant},
            const_labels={"team": "payments"},
        )


async def test_const_labels_are_on_every_family(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(
        starlette_app(), registry=registry, const_labels={"team": "payments", "region": "eu"}
    )
    await get(app, "/items/1")
    for family in registry.collect():
        if family.name.startswith("http_"):
            for sample in family.samples:
                assert sample.labels["team"] == "payments", sample
                assert sample.labels["region"] == "eu", sample


async def test_excluded_methods_are_not_measured(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(starlette_app(), registry=registry, exclude_methods=("options",))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.options("/items/1")
        await client.get("/items/1")
    assert label_values(registry, "http_requests_total", "method") == {"GET"}


async def test_labels_and_settings_on_the_one_call_path(registry: CollectorRegistry) -> None:
    settings = Settings.from_env(
        {"METRICS_LABELS": "team=payments", "METRICS_EXCLUDE_METHODS": "OPTIONS"}
    )
    app = instrument(
        starlette_app(),
        settings,
        registry=registry,
        labels={"tenant": tenant},
        tracer_provider=None,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/items/1", headers={"x-tenant": "acme"})
        await client.options("/items/1")
        scrape = (await client.get("/metrics")).text
    assert (
        'http_requests_total{handler="/items/{item_id}",method="GET",status="200",'
        'team="payments",tenant="acme"} 1.0'
    ) in scrape
    assert 'method="OPTIONS"' not in scrape


# --- prometheus-fastapi-instrumentator's layout ---------------------------------------


def _families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name → (type, label names) of an exposition, samples' extra labels (le) excluded."""
    found = {}
    for family in text_string_to_metric_families(text):
        names: set[str] = set()
        for sample in family.samples:
            names.update(key for key in sample.labels if key not in ("le", "quantile"))
        found[family.name] = (family.type, frozenset(names))
    return found


async def _drive(app: ASGIApp) -> None:
    await get(app, "/items/1")
    await get(app, "/items/missing")


async def test_compat_switch_matches_the_instrumentators_exposition() -> None:
    """The same requests through the real instrumentator and through the compatibility
    layout give the same family names and label names, and grouped statuses."""
    theirs_registry = CollectorRegistry()
    theirs = starlette_app()
    Instrumentator(
        registry=theirs_registry,
        should_instrument_requests_inprogress=True,
        inprogress_labels=True,
    ).instrument(theirs)
    await _drive(theirs)
    ours_registry = CollectorRegistry()
    ours = MetricsMiddleware(starlette_app(), registry=ours_registry, instrumentator_compat=True)
    await _drive(ours)

    their_families = _families(generate_latest(theirs_registry).decode())
    our_families = _families(generate_latest(ours_registry).decode())
    for name, (kind, labels) in their_families.items():
        if not name.startswith("http_"):
            continue
        assert name in our_families, name
        # The instrumentator's sizes are summaries; ours are histograms, which expose the
        # same _sum and _count series (what its dashboards query).
        assert our_families[name][0] == kind or (kind, our_families[name][0]) == (
            "summary",
            "histogram",
        ), name
        assert our_families[name][1] == labels, name
    statuses = label_values(ours_registry, "http_requests_total", "status")
    assert (
        statuses
        == label_values(theirs_registry, "http_requests_total", "status")
        == {
            "2xx",
            "4xx",
        }
    )


async def test_without_the_switch_statuses_are_exact(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(starlette_app(), registry=registry)
    await _drive(app)
    assert label_values(registry, "http_requests_total", "status") == {"200", "404"}
    assert "http_request_duration_highr_seconds" not in generate_latest(registry).decode()


# Queries of the kind prometheus-fastapi-instrumentator users keep in their dashboards,
# unmodified: grouped statuses, the high-resolution histogram, the in-progress gauge.
INSTRUMENTATOR_DASHBOARD_QUERIES = [
    'sum(rate(http_requests_total{status="2xx"}[1m]))',
    'sum by (handler) (rate(http_requests_total{status=~"4xx|5xx"}[1m]))',
    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_highr_seconds_bucket[1m])))",
    'histogram_quantile(0.5, sum by (le, handler) (rate(http_request_duration_seconds_bucket{handler!="none"}[1m])))',
    "sum(http_requests_inprogress)",
    "sum by (handler) (rate(http_response_size_bytes_sum[1m]))",
]


@pytest.mark.realparts
@pytest.mark.slow
def test_instrumentator_dashboard_queries_return_data() -> None:
    registry = CollectorRegistry()
    settings = Settings.from_env({"METRICS_INSTRUMENTATOR_COMPAT": "true"})
    app = instrument(starlette_app(), settings, registry=registry)
    with (
        run_uvicorn(app) as server,
        run_prometheus([f"127.0.0.1:{server.port}"]) as prom,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):

        def traffic() -> None:
            for number in range(20):
                client.get(f"/items/{number}")
            client.get("/items/missing")

        def answers(query: str) -> bool:
            traffic()  # keep samples coming, so rate() has points in its window
            found = prom.vector(query)
            return any(sample["value"][1] != "NaN" for sample in found)

        traffic()
        prom.wait_for('http_requests_total{status="2xx"}')
        for query in INSTRUMENTATOR_DASHBOARD_QUERIES:
            wait_until(functools.partial(answers, query), timeout=30, what=query, interval=0.5)
