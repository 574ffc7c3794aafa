"""/metrics/legacy: the seed's JSON snapshot, read from the same registry as /metrics."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe.metrics.http import MetricsMiddleware
from asgi_observe.metrics.legacy import legacy_metrics_app, legacy_snapshot
from asgi_observe.metrics.system import register_system_metrics
from tests.metrics.helpers import value

TOKEN = "legacy-token-0123456789"


def build_app(registry: CollectorRegistry) -> MetricsMiddleware:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["item_id"])

    async def boom(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=503)

    starlette = Starlette(routes=[Route("/items/{item_id}", item), Route("/boom", boom)])
    return MetricsMiddleware(starlette, registry=registry)


async def drive(registry: CollectorRegistry) -> None:
    transport = httpx.ASGITransport(app=build_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for i in range(6):
            assert (await client.get(f"/items/{i}")).status_code == 200
        assert (await client.post("/items/1")).status_code == 405
        assert (await client.get("/boom")).status_code == 503
        assert (await client.get("/nowhere")).status_code == 404


async def test_snapshot_is_derived_from_the_registry(registry: CollectorRegistry) -> None:
    register_system_metrics(registry, namespace="baliblissed")
    await drive(registry)
    transport = httpx.ASGITransport(app=legacy_metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics/legacy")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"timestamp", "api_metrics", "system_metrics"}
    datetime.fromisoformat(document["timestamp"].replace("Z", "+00:00"))
    api = document["api_metrics"]
    assert api["requests"] == 9
    assert api["errors"] == 1
    assert api["client_errors"] == 2
    assert api["error_rate"] == pytest.approx(1 / 9, abs=1e-6)
    assert api["by_status"] == {"200": 6, "404": 1, "405": 1, "503": 1}
    assert api["by_method"] == {"GET": 8, "POST": 1}
    assert sum(api["by_handler"].values()) == 9
    assert api["by_handler"]["/items/{item_id}"] >= 6
    assert api["by_handler"]["/boom"] == 1
    duration_sum = sum(
        s.value for f in registry.collect() for s in f.samples
        if s.name == "http_request_duration_seconds_sum"
    )  # fmt: skip
    assert api["average_latency_ms"] == pytest.approx(duration_sum / 9 * 1000, abs=0.001)
    assert (
        value(
            registry, "http_requests_total", method="GET", status="200", handler="/items/{item_id}"
        )
        == 6
    )
    system = document["system_metrics"]
    assert {"cpu", "memory", "disk", "process_threads"} <= system.keys()
    assert 0 <= system["memory"] <= 100


async def test_empty_registry_gives_zeros_not_errors(registry: CollectorRegistry) -> None:
    document = legacy_snapshot(registry)
    assert document["api_metrics"]["requests"] == 0
    assert document["api_metrics"]["average_latency_ms"] is None
    assert document["api_metrics"]["error_rate"] == 0.0
    assert document["system_metrics"] == {}


async def test_namespaced_http_metrics(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(build_app(CollectorRegistry()).app, registry=registry, namespace="shop")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/items/1")
    assert legacy_snapshot(registry, namespace="shop")["api_metrics"]["requests"] == 1
    assert legacy_snapshot(registry)["api_metrics"]["requests"] == 0


async def test_legacy_is_guarded_like_metrics(registry: CollectorRegistry) -> None:
    app = legacy_metrics_app(registry, token=TOKEN, allow=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=app, client=("10.1.1.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/metrics/legacy")).status_code == 401
        ok = await client.get("/metrics/legacy", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        head = await client.head("/metrics/legacy", headers={"authorization": f"Bearer {TOKEN}"})
        assert head.status_code == 200
        assert head.content == b""
        post = await client.post("/metrics/legacy", headers={"authorization": f"Bearer {TOKEN}"})
        assert post.status_code == 405
    far = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with httpx.AsyncClient(transport=far, base_url="http://test") as client:
        assert (await client.get("/metrics/legacy")).status_code == 403


async def test_system_figures_appear_without_registering_system_metrics() -> None:
    import httpx
    from prometheus_client import CollectorRegistry

    from asgi_observe.metrics.legacy import legacy_metrics_app

    registry = CollectorRegistry()
    transport = httpx.ASGITransport(app=legacy_metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        document = (await client.get("/")).json()
    assert {"memory", "disk"} <= set(document["system_metrics"])
    assert 0 < document["system_metrics"]["disk"] <= 100
    assert list(registry.collect()) == []  # nothing was added to the registry
