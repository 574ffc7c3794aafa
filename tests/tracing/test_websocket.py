"""TracingMiddleware on websocket connections: one SERVER span per connection."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.tracing import TracingMiddleware
from asgi_observe.tracing.middleware import WEBSOCKET_CLOSE_CODE, WEBSOCKET_SPAN_NAME
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.websocket_support import (
    AppError,
    FakeConnection,
    close_after_one_app,
    deny_app,
    echo_app,
    raise_after_accept_app,
    raise_before_accept_app,
    recording,
    reject_app,
    routed,
    same_messages,
    snapshot,
    ws_scope,
)

ROUTE = "/ws/{room}"


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


async def test_accepted_connection_one_server_span_with_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(routed(echo_app, ROUTE), tracer_provider=provider)
    scope = ws_scope("/ws/lobby", query=b"token=secret123&page=2", scheme="wss")
    await FakeConnection(["a", "b", "c"], disconnect_code=1001).run(app, scope)

    span = only_span(exporter)  # one per connection: no spans per message
    assert span.name == ROUTE
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == ROUTE
    assert attributes[WEBSOCKET_CLOSE_CODE] == 1001  # the client's disconnect code
    assert attributes["url.path"] == "/ws/lobby"
    assert attributes["url.scheme"] == "wss"
    assert attributes["url.query"] == "token=[REDACTED]&page=2"
    assert attributes["server.address"] == "chat.example.com"
    assert attributes["server.port"] == 8443
    assert attributes["client.address"] == "203.0.113.7"
    assert attributes["user_agent.original"] == "ws-test/1"
    assert "http.request.method" not in attributes
    assert "http.response.status_code" not in attributes


async def test_app_close_code_wins_over_the_later_disconnect(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(routed(close_after_one_app, ROUTE), tracer_provider=provider)
    await FakeConnection(["hi"], disconnect_code=1006).run(app)
    assert only_span(exporter).attributes[WEBSOCKET_CLOSE_CODE] == 4000  # type: ignore[index]


async def test_rejected_by_close_records_the_close_code_without_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(routed(reject_app, ROUTE), tracer_provider=provider)
    await FakeConnection().run(app)
    span = only_span(exporter)
    assert span.attributes is not None
    assert span.attributes[WEBSOCKET_CLOSE_CODE] == 1008
    assert span.status.status_code is StatusCode.UNSET


async def test_denial_response_records_its_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(routed(deny_app, ROUTE), tracer_provider=provider)
    await FakeConnection().run(app)
    span = only_span(exporter)
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 401
    assert WEBSOCKET_CLOSE_CODE not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("app", "incoming"),
    [(raise_before_accept_app, []), (raise_after_accept_app, ["one"])],
    ids=["before-accept", "after-accept"],
)
async def test_app_exception_sets_error_and_an_exception_event(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    app: ASGIApp,
    incoming: list[str],
) -> None:
    middleware = TracingMiddleware(routed(app, ROUTE), tracer_provider=provider)
    with pytest.raises(AppError) as raised:
        await FakeConnection(incoming).run(middleware)
    span = only_span(exporter)
    assert span.name == ROUTE
    assert span.status.status_code is StatusCode.ERROR
    events = [event for event in span.events if event.name == "exception"]
    assert len(events) == 1
    assert events[0].attributes is not None
    assert str(events[0].attributes["exception.type"]).endswith("AppError")
    assert "alice@example.com" not in str(events[0].attributes)  # redacted like HTTP
    assert str(raised.value) in ("handshake check failed for alice@example.com", "handler bug")


async def test_span_is_current_while_the_app_runs(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)
        await echo_app(scope, receive, send)

    await FakeConnection(["x"]).run(TracingMiddleware(app, tracer_provider=provider))
    span = only_span(exporter)
    assert span.context is not None
    assert seen == [span.context.span_id]
    assert span.name == WEBSOCKET_SPAN_NAME  # no route known


async def test_request_id_is_recorded(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = RequestIdMiddleware(TracingMiddleware(routed(echo_app, ROUTE), tracer_provider=provider))
    conn = FakeConnection()
    await conn.run(app, ws_scope(headers=[(b"x-request-id", b"conn-42")]))
    assert only_span(exporter).attributes["request_id"] == "conn-42"  # type: ignore[index]


async def ws_room(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close(code=1000)


async def test_starlette_route_template_names_the_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Starlette(routes=[WebSocketRoute("/ws/{room}", ws_room)])
    await FakeConnection(["hey"]).run(
        TracingMiddleware(app, tracer_provider=provider), ws_scope("/ws/kitchen")
    )
    span = only_span(exporter)
    assert span.name == "/ws/{room}"
    assert span.attributes is not None
    assert span.attributes[WEBSOCKET_CLOSE_CODE] == 1000


async def test_excluded_paths_get_no_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(echo_app, tracer_provider=provider, excluded_paths=["/ws/lobby"])
    await FakeConnection(["x"]).run(app)
    assert exporter.get_finished_spans() == ()


async def test_unsampled_connection_passes_through(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    try:
        conn = FakeConnection(["x"])
        await conn.run(TracingMiddleware(echo_app, tracer_provider=provider))
        assert [m["type"] for m in conn.sent] == ["websocket.accept", "websocket.send"]
    finally:
        provider.shutdown()
    assert exporter.get_finished_spans() == ()


async def test_fifty_concurrent_connections_get_their_own_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    release = asyncio.Event()
    app = TracingMiddleware(routed(echo_app, ROUTE), tracer_provider=provider)
    conns = [FakeConnection(["m"], disconnect_code=4000 + i, release=release) for i in range(50)]
    tasks = [asyncio.create_task(conn.run(app)) for conn in conns]
    await asyncio.gather(*(conn.waiting.wait() for conn in conns))
    release.set()
    await asyncio.gather(*tasks)
    spans = exporter.get_finished_spans()
    assert len(spans) == 50
    codes = sorted(int(str((span.attributes or {})[WEBSOCKET_CLOSE_CODE])) for span in spans)
    assert codes == [4000 + i for i in range(50)]
    assert len({span.context.trace_id for span in spans if span.context}) == 50


async def test_messages_pass_through_unchanged(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    scripted: list[str | bytes] = ["a", b"\x00", "c"]
    bare = FakeConnection(scripted)
    seen_bare: list[Message] = []
    await bare.run(recording(echo_app, seen_bare))

    wrapped = FakeConnection(scripted)
    seen_wrapped: list[Message] = []
    await wrapped.run(
        TracingMiddleware(
            recording(echo_app, seen_wrapped),
            tracer_provider=provider,
            traceresponse=True,  # HTTP only: websocket.accept is left as the app sent it
        )
    )
    assert snapshot(wrapped.sent) == snapshot(bare.sent)
    assert snapshot(seen_wrapped) == snapshot(seen_bare)
    assert same_messages(seen_wrapped, wrapped.received)


async def test_failing_hooks_do_not_reach_the_connection(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    calls: list[str] = []

    def request_hook(span: trace.Span, scope: Scope, message: Message) -> None:
        calls.append(message["type"])
        raise RuntimeError("hook bug")

    app = TracingMiddleware(
        routed(echo_app, ROUTE), tracer_provider=provider, client_request_hook=request_hook
    )
    conn = FakeConnection(["x"])
    await conn.run(app)
    assert calls == ["websocket.connect", "websocket.receive", "websocket.disconnect"]
    assert [m["type"] for m in conn.sent] == ["websocket.accept", "websocket.send"]
    assert len(exporter.get_finished_spans()) == 1
