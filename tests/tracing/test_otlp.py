"""OTLP export over the real wire, to test-side receivers on loopback (gRPC and HTTP).

Covers what only a real collector connection shows: decoded span names, kinds, parent
links, resource and redacted attributes, one span per request, sampling shares, and
a collector that refuses or black-holes connections.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_observe import instrument
from asgi_observe.settings import Settings
from asgi_observe.tracing import (
    TracingMiddleware,
    add_span_attributes,
    setup_tracing,
    shutdown_tracing,
    tracer,
)
from asgi_observe.tracing.setup import _guards
from asgi_observe.types import ASGIApp, Message, Scope
from tests.support import black_hole, refused_port, run_uvicorn, wait_until
from tests.tracing.otlp_receivers import Receiver, grpc_receiver, http_receiver

pytestmark = pytest.mark.realparts

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
INTERNAL = 1
ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


async def item(request: Request) -> PlainTextResponse:
    with tracer.start_as_current_span("load item"):
        add_span_attributes(owner="jane.doe@example.com")
    # Bypassing the helpers: only the export-time pass can catch this one.
    trace.get_current_span().set_attribute("direct", "jane.doe@example.com")
    return PlainTextResponse("ok")


async def boom(request: Request) -> Response:
    raise RuntimeError("card of jane.doe@example.com declined")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[Route("/items/{item_id}", item), Route("/boom", boom), Route("/health", item)]
    )


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, Receiver]]:
    factory = grpc_receiver if request.param == "grpc" else http_receiver
    with factory() as found:
        yield request.param, found


def settings_for(protocol: str, endpoint: str, **extra: object) -> Settings:
    return Settings(
        otlp_endpoint=endpoint,
        otlp_protocol="grpc" if protocol == "grpc" else "http/protobuf",
        **extra,  # type: ignore[arg-type]
    )


async def test_spans_decoded_by_a_real_receiver(receiver: tuple[str, Receiver]) -> None:
    protocol, collector = receiver
    settings = settings_for(
        protocol,
        collector.endpoint,
        service_name="baliblissed-backend",
        service_version="1.0.0",
        environment="staging",
        resource_attributes=(("team", "core"),),
        otlp_headers=(("X-Tenant", "acme"),),
    )
    provider = setup_tracing(settings, set_global=False)
    app = TracingMiddleware(
        starlette_app(), tracer_provider=provider, excluded_urls=settings.excluded_urls
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.local") as http:
        await http.get("/items/7", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        await http.get("/items/8", params={"email": "bob@example.com"})
        await http.get("/health")  # excluded: no span
        assert (await http.get("/boom")).status_code == 500
    assert shutdown_tracing(provider) is True  # flushes the batch processor

    spans = collector.wait_for(5)
    servers = [s for s in spans if s.kind == SERVER]
    assert sorted(s.name for s in servers) == [
        "GET /boom",
        "GET /items/{item_id}",
        "GET /items/{item_id}",
    ]  # one span per traced request, named after the template
    by_path = {s.attributes["url.path"]: s for s in servers}
    linked = by_path["/items/7"]
    assert linked.trace_id == TRACE_ID
    assert linked.parent_span_id == PARENT_ID
    assert linked.attributes["http.route"] == "/items/{item_id}"
    assert linked.attributes["http.response.status_code"] == 200
    assert linked.attributes["server.address"] == "api.local"
    assert linked.attributes["direct"] == "[REDACTED_EMAIL]"
    assert "bob" not in by_path["/items/8"].attributes["url.query"]
    assert "[REDACTED_EMAIL]" in by_path["/items/8"].attributes["url.query"]
    assert by_path["/items/8"].parent_span_id == ""

    children = [s for s in spans if s.name == "load item"]
    assert len(children) == 2
    for child in children:
        assert child.kind == INTERNAL
        assert child.attributes["owner"] == "[REDACTED_EMAIL]"
    assert {c.parent_span_id for c in children} == {
        by_path["/items/7"].span_id,
        by_path["/items/8"].span_id,
    }

    failed = by_path["/boom"]
    assert failed.status_code == ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    [(event, event_attributes)] = failed.events
    assert event == "exception"
    assert event_attributes["exception.message"] == "card of [REDACTED_EMAIL] declined"

    for span in spans:
        assert span.resource["service.name"] == "baliblissed-backend"
        assert span.resource["service.version"] == "1.0.0"
        assert span.resource["deployment.environment"] == "staging"
        assert span.resource["team"] == "core"
    assert all(headers.get("x-tenant") == "acme" for headers in collector.headers)


def test_real_server_traceresponse_and_lifespan_over_http_export() -> None:
    started: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("up")
        yield

    inner = Starlette(routes=[Route("/items/{item_id}", item)], lifespan=lifespan)
    with http_receiver() as collector:
        provider = setup_tracing(
            settings_for("http/protobuf", collector.endpoint), set_global=False
        )
        app = TracingMiddleware(inner, tracer_provider=provider, traceresponse=True)
        with run_uvicorn(app) as server:
            assert started == ["up"]  # lifespan went through the middleware untouched
            response = httpx.get(
                f"{server.url}/items/3", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            )
        assert shutdown_tracing(provider) is True
        spans = collector.wait_for(2)
    [span] = [s for s in spans if s.kind == SERVER]
    assert response.status_code == 200
    assert response.headers["traceresponse"] == f"00-{TRACE_ID}-{span.span_id}-01"
    assert span.attributes["client.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == server.port


@contextlib.contextmanager
def dead_collector(kind: str) -> Iterator[int]:
    if kind == "refused":
        yield refused_port()
    else:
        with black_hole() as port:
            yield port


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("kind", ["refused", "black hole"])
async def test_collector_down_does_not_affect_requests(
    protocol: str, kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # export batches while requests run
    with dead_collector(kind) as port, caplog.at_level(logging.INFO):
        settings = settings_for(protocol, f"http://127.0.0.1:{port}", otlp_timeout=0.5)
        provider = setup_tracing(settings, set_global=False)
        guard = _guards[provider]
        export_threads: set[int] = set()
        export = guard.export

        def export_noting_the_thread(spans: Any) -> Any:
            export_threads.add(threading.get_ident())
            return export(spans)

        monkeypatch.setattr(guard, "export", export_noting_the_thread)
        app = TracingMiddleware(starlette_app(), tracer_provider=provider)
        transport = httpx.ASGITransport(app=app)
        statuses: list[int] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            for index in range(300):
                statuses.append((await http.get(f"/items/{index}")).status_code)
        wait_until(lambda: guard.failed_batches >= 2, timeout=15, what="two failed exports")
        shutdown_tracing(provider, timeout=2.0)
    assert statuses == [200] * 300
    # Exports (and their timeouts) happen on the batch processor's thread, never on the
    # request path: the event loop's thread never exported.
    assert export_threads
    assert threading.get_ident() not in export_threads
    ours = [r for r in caplog.records if r.name == "asgi_observe" and "failed" in r.getMessage()]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    exporter_lines = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(exporter_lines) <= 10, [r.getMessage() for r in exporter_lines]  # not per span


async def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return status


async def test_ratio_sampling_share_and_parent_based_children() -> None:
    async def raw(scope: Scope, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    rng = random.Random(4)
    with http_receiver() as collector:
        settings = settings_for("http/protobuf", collector.endpoint, sampler_ratio=0.1)
        provider: TracerProvider = setup_tracing(settings, set_global=False)
        app = TracingMiddleware(raw, tracer_provider=provider)
        roots = 2000
        for _ in range(roots):
            assert await call(app, "/root", []) == 200
        for flags, path in ((b"01", "/sampled-parent"), (b"00", "/unsampled-parent")):
            for _ in range(200):
                parent = b"00-%032x-%016x-" % (rng.getrandbits(128), rng.getrandbits(64) or 1)
                assert await call(app, path, [(b"traceparent", parent + flags)]) == 200
        assert shutdown_tracing(provider, timeout=10) is True
        spans = collector.snapshot()
    by_path: dict[str, int] = {}
    for span in spans:
        by_path[span.attributes["url.path"]] = by_path.get(span.attributes["url.path"], 0) + 1
    # Binomial(2000, 0.1): mean 200, standard deviation 13.4; ±5 sigma.
    assert 133 <= by_path.get("/root", 0) <= 267, by_path
    assert by_path.get("/sampled-parent") == 200  # a sampled caller is always honoured
    assert "/unsampled-parent" not in by_path


async def test_spans_are_exported_after_a_second_lifespan_cycle(
    receiver: tuple[str, Receiver],
) -> None:
    # Test suites enter one app's lifespan several times per process (asgi-lifespan here).
    protocol, collector = receiver
    app = instrument(
        starlette_app(),
        settings_for(protocol, collector.endpoint, service_name="cycles"),
        registry=CollectorRegistry(),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        for cycle in (1, 2, 3):
            async with (
                LifespanManager(app),
                httpx.AsyncClient(transport=transport, base_url="http://api") as client,
            ):
                assert (await client.get(f"/items/cycle-{cycle}")).status_code == 200
            # Each lifespan shutdown flushed (the batch delay is 5 s): the spans are there.
            paths = {s.attributes.get("url.path") for s in collector.snapshot()}
            assert f"/items/cycle-{cycle}" in paths, (cycle, paths)
    finally:
        shutdown_tracing(app.tracer_provider)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_one_warning_per_outage_the_exporters_retries_included(
    protocol: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # one batch per span below
    port = refused_port()
    # Long enough for the exporters to retry ("Transient error ... retrying in 1s").
    settings = settings_for(protocol, f"http://127.0.0.1:{port}", otlp_timeout=2.5)
    provider = setup_tracing(settings, set_global=False)
    guard = _guards[provider]
    tracer_ = provider.get_tracer("outage")
    try:
        with caplog.at_level(logging.DEBUG):
            for index in range(1, 4):
                tracer_.start_span(f"batch {index}").end()

                def exported(done: int = index) -> bool:
                    return guard.failed_batches >= done

                wait_until(exported, timeout=20, what=f"failed export {index}")
    finally:
        shutdown_tracing(provider, timeout=2.0)
    # The exporter's lines are still there for debugging, retries included.
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retried, "the exporter did not retry: the test proves nothing"
    assert all(r.levelno == logging.DEBUG for r in retried)
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and (r.name == "asgi_observe" or r.name.startswith("opentelemetry.exporter"))
    ]
    assert len(warnings) == 1, [(r.name, r.getMessage()) for r in warnings]
    assert warnings[0].name == "asgi_observe"
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
