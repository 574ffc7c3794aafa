"""A real Prometheus scraping a real uvicorn serving the reference example."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp, Receive, Scope, Send
from examples.baliblissed import build_api
from tests.support import http_get, run_prometheus, run_uvicorn

pytestmark = pytest.mark.realparts


def traced(app: ASGIApp, provider: TracerProvider) -> ASGIApp:
    tracer = provider.get_tracer("e2e")

    async def with_span(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        with tracer.start_as_current_span("request"):
            await app(scope, receive, send)

    return with_span


def test_prometheus_scrapes_series_with_labels_and_exemplars() -> None:
    registry = CollectorRegistry()
    app = traced(
        instrument(build_api(Settings(), registry=registry), Settings(), registry=registry),
        TracerProvider(),
    )
    with run_uvicorn(app) as server:
        for slug in ("ubud", "canggu", "uluwatu"):
            status, _, _ = http_get(f"{server.url}/destinations/{slug}")
            assert status == 200
        assert http_get(f"{server.url}/no/such/page")[0] == 404
        with run_prometheus([f"127.0.0.1:{server.port}"]) as prometheus:
            series = prometheus.wait_for('http_requests_total{handler="/destinations/{slug}"}')
            assert series[0]["metric"]["method"] == "GET"
            assert series[0]["metric"]["status"] == "200"
            assert float(series[0]["value"][1]) == 3
            unmatched = prometheus.vector('http_requests_total{status="404"}')
            assert [s["metric"]["handler"] for s in unmatched] == ["none"]
            for name in (
                "http_request_duration_seconds_bucket",
                "http_request_size_bytes_bucket",
                "http_response_size_bytes_bucket",
                "http_requests_in_progress",
            ):
                assert prometheus.vector(name), name
            # No raw path ever becomes a label value.
            handlers = {s["metric"]["handler"] for s in prometheus.vector("http_requests_total")}
            assert not any(h.startswith("/destinations/") and "{" not in h for h in handlers)
            exemplars = prometheus.exemplars(
                'http_request_duration_seconds_bucket{handler="/destinations/{slug}"}'
            )
            trace_ids = {e["labels"]["trace_id"] for group in exemplars for e in group["exemplars"]}
            assert trace_ids, exemplars
            assert all(len(t) == 32 and int(t, 16) for t in trace_ids)
