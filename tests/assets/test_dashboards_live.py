"""Every dashboard query against a real Prometheus scraping a real instrumented service.

The offline checks prove each query parses and names known metrics; only a live
Prometheus proves the label names and values line up (`request_type`, `breaker_name`,
`check`, route templates in `handler`): a query answering HTTP 400 has a syntax error,
one answering an empty vector selects nothing the service exposes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument
from asgi_observe.health import HealthApp
from asgi_observe.metrics.app import AppMetrics
from asgi_observe.metrics.system import register_system_metrics
from asgi_observe.types import ASGIApp
from tests.assets.promql import VARIABLE_SAMPLES, every_query, substitute
from tests.support import Prometheus, http_get, run_prometheus, run_uvicorn

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

# A handler has an in-progress series only while it serves a request: between bursts of
# traffic this panel is legitimately empty.
MAY_BE_EMPTY = {"fastapi-overview.json: panel 'In-progress requests by handler' A"}


def build_service(registry: CollectorRegistry) -> ASGIApp:
    async def item(request: Request) -> PlainTextResponse:
        if request.path_params["item_id"] == "boom":
            return PlainTextResponse("failed", status_code=500)
        return PlainTextResponse("x" * 100)

    api = Starlette(routes=[Route("/items/{item_id}", item, methods=["GET", "POST"])])
    health = HealthApp({VARIABLE_SAMPLES["check"]: lambda: True}, registry=registry)
    return instrument(
        api, Settings(), health=health, registry=registry, tracer_provider=TracerProvider()
    )


def record_application_metrics(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)
    register_system_metrics(registry, namespace="baliblissed")
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics.cache_hit(3)
    metrics.cache_miss()
    with metrics.track_ai(VARIABLE_SAMPLES["request_type"]) as call:
        call.tokens(120)
    with (
        contextlib.suppress(RuntimeError),
        metrics.track_ai(VARIABLE_SAMPLES["request_type"]),
    ):
        raise RuntimeError("upstream refused")
    metrics.set_circuit_state(VARIABLE_SAMPLES["breaker"], 1)
    metrics.rate_limit_hit("/items/{item_id}")


@contextlib.contextmanager
def steady_traffic(base_url: str) -> Iterator[None]:
    """Requests in the background, so rates over the scrape window are non-zero."""
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            for path in ("/items/1", "/items/2", "/items/boom", "/nowhere"):
                http_get(base_url + path)
            http_get(base_url + "/health/ready")
            stop.wait(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_every_dashboard_query_returns_data_from_a_real_prometheus() -> None:
    registry = CollectorRegistry()
    record_application_metrics(registry)
    with run_uvicorn(build_service(registry)) as server, steady_traffic(server.url):
        target = f"127.0.0.1:{server.port}"
        with run_prometheus([target]) as prometheus:
            samples = {**VARIABLE_SAMPLES, "job": "app", "instance": target}
            samples["handler"] = "/items/{item_id}"
            # Two scrapes of a growing counter: every rate() below has data.
            prometheus.wait_for('rate(http_requests_total{status="500"}[1m]) > 0', timeout=30)
            prometheus.wait_for("rate(baliblissed_cache_hits_total[1m]) >= 0", timeout=10)
            failures = query_all(prometheus, samples)
    assert not failures, "\n".join(failures)


def query_all(prometheus: Prometheus, samples: dict[str, str]) -> list[str]:
    failures = []
    for where, expr in every_query():
        promql = substitute(expr, samples)
        status, payload = prometheus.query(promql)
        if status != 200:
            failures.append(f"{where}: HTTP {status} {payload.get('error')}: {promql}")
        elif not payload["data"]["result"] and where not in MAY_BE_EMPTY:
            failures.append(f"{where}: empty result: {promql}")
    return failures
