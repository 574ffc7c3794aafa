"""instrument() end to end with tracing: one trace per request, flushed at shutdown."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument
from asgi_observe.tracing import shutdown_tracing
from tests.support import http_get, run_uvicorn
from tests.tracing.otlp_receivers import http_receiver

pytestmark = pytest.mark.realparts


async def booking(request: Request) -> PlainTextResponse:
    return PlainTextResponse("booked")


def test_spans_are_flushed_on_lifespan_shutdown_and_carry_the_request_id() -> None:
    with http_receiver() as collector:
        settings = Settings(
            service_name="bookings",
            otlp_endpoint=collector.endpoint,
            otlp_protocol="http/protobuf",
        )
        app = instrument(
            Starlette(routes=[Route("/bookings/{bid}", booking)]),
            settings,
            registry=CollectorRegistry(),
        )
        try:
            with run_uvicorn(app) as server:
                status, headers, _ = http_get(
                    f"{server.url}/bookings/42?email=guest@example.com",
                    headers={"X-Request-ID": "req-abc-123"},
                )
                assert status == 200
                assert headers["x-request-id"] == "req-abc-123"
                assert http_get(f"{server.url}/health/live")[0] == 404  # no health app given
            # The batch processor waits 5 s between exports; spans here mean the
            # lifespan shutdown flushed them.
            spans = collector.snapshot()
        finally:
            shutdown_tracing(app.tracer_provider)
    [span] = [s for s in spans if s.name.startswith("GET /bookings")]
    assert span.name == "GET /bookings/{bid}"
    assert span.resource["service.name"] == "bookings"
    assert span.attributes["request_id"] == "req-abc-123"
    assert span.attributes["http.route"] == "/bookings/{bid}"
    assert "guest@example.com" not in str(span.attributes)
