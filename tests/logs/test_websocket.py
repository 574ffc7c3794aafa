"""AccessLogMiddleware on websocket connections: one line per connection."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from asgi_observe.logs.access import WEBSOCKET_EVENT, WEBSOCKET_FIELD_NAMES, AccessLogMiddleware
from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.tracing import TracingMiddleware
from asgi_observe.types import ASGIApp, Message
from tests.logs.support import RecordingLogger, json_logs, lines, restore_logging
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

__all__ = ["json_logs", "restore_logging"]  # fixtures used below

ROUTE = "/ws/{room}"


def only_line(logger: RecordingLogger) -> tuple[str, dict[str, Any]]:
    assert len(logger.records) == 1, logger.records
    level, event, fields = logger.records[0]
    assert event == WEBSOCKET_EVENT
    return level, fields


async def test_accepted_connection_one_info_line_with_every_field() -> None:
    logger = RecordingLogger()
    app = AccessLogMiddleware(routed(echo_app, ROUTE), logger=logger)
    scope = ws_scope("/ws/lobby", query=b"token=hunter2&x=1")
    await FakeConnection(["a", "b", b"c"], disconnect_code=1001).run(app, scope)

    level, fields = only_line(logger)
    assert level == "info"
    assert set(fields) == set(WEBSOCKET_FIELD_NAMES) - {"error"}
    assert fields["route"] == ROUTE
    assert fields["path"] == "/ws/lobby?token=[REDACTED]&x=1"
    assert fields["outcome"] == "accepted"
    assert fields["close_code"] == 1001
    assert fields["messages_received"] == 3
    assert fields["messages_sent"] == 3
    assert isinstance(fields["duration_ms"], float)
    assert fields["client_ip"] == "203.0.113.7"
    assert fields["user_agent"] == "ws-test/1"
    assert fields["trace_id"] is None


async def test_server_close_counts_messages_each_way() -> None:
    logger = RecordingLogger()
    app = AccessLogMiddleware(routed(close_after_one_app, ROUTE), logger=logger)
    await FakeConnection(["hi"]).run(app)
    level, fields = only_line(logger)
    assert (level, fields["outcome"], fields["close_code"]) == ("info", "accepted", 4000)
    assert (fields["messages_received"], fields["messages_sent"]) == (1, 2)


@pytest.mark.parametrize(
    ("app", "close_code"), [(reject_app, 1008), (deny_app, None)], ids=["close", "denial"]
)
async def test_rejected_connection_is_a_warning(app: ASGIApp, close_code: int | None) -> None:
    logger = RecordingLogger()
    await FakeConnection().run(AccessLogMiddleware(routed(app, ROUTE), logger=logger))
    level, fields = only_line(logger)
    assert (level, fields["outcome"], fields["close_code"]) == ("warning", "rejected", close_code)
    assert (fields["messages_received"], fields["messages_sent"]) == (0, 0)


@pytest.mark.parametrize(
    ("app", "incoming"),
    [(raise_before_accept_app, []), (raise_after_accept_app, ["one"])],
    ids=["before-accept", "after-accept"],
)
async def test_app_exception_is_an_error_line_and_re_raised(
    app: ASGIApp, incoming: list[str]
) -> None:
    logger = RecordingLogger()
    with pytest.raises(AppError):
        await FakeConnection(incoming).run(AccessLogMiddleware(routed(app, ROUTE), logger=logger))
    level, fields = only_line(logger)
    assert (level, fields["outcome"]) == ("error", "error")
    assert fields["error"].startswith("AppError: ")
    assert "alice@example.com" not in fields["error"]


async def test_request_and_trace_ids_are_on_the_line() -> None:
    logger = RecordingLogger()
    provider = TracerProvider(shutdown_on_exit=False)
    try:
        app = RequestIdMiddleware(
            TracingMiddleware(
                AccessLogMiddleware(routed(echo_app, ROUTE), logger=logger),
                tracer_provider=provider,
            )
        )
        await FakeConnection(["x"]).run(app, ws_scope(headers=[(b"x-request-id", b"conn-7")]))
    finally:
        provider.shutdown()
    _, fields = only_line(logger)
    assert fields["request_id"] == "conn-7"
    assert len(fields["trace_id"]) == 32
    assert len(fields["span_id"]) == 16


async def ws_room(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())


async def test_starlette_route_template() -> None:
    logger = RecordingLogger()
    app = AccessLogMiddleware(
        Starlette(routes=[WebSocketRoute("/ws/{room}", ws_room)]), logger=logger
    )
    await FakeConnection(["hey"]).run(app, ws_scope("/ws/kitchen"))
    _, fields = only_line(logger)
    assert fields["route"] == "/ws/{room}"
    # The endpoint returned without closing and before any disconnect: the server
    # closes the socket, so no close code crossed the middleware.
    assert fields["close_code"] is None
    assert (fields["messages_received"], fields["messages_sent"]) == (1, 1)


async def test_excluded_paths_get_no_line() -> None:
    logger = RecordingLogger()
    app = AccessLogMiddleware(echo_app, logger=logger, exclude_paths=["/ws/lobby"])
    await FakeConnection(["x"]).run(app)
    assert logger.records == []


async def test_fifty_concurrent_connections_one_line_each() -> None:
    logger = RecordingLogger()
    release = asyncio.Event()
    app = RequestIdMiddleware(AccessLogMiddleware(routed(echo_app, ROUTE), logger=logger))
    conns = [FakeConnection(["m"] * (i % 5), release=release) for i in range(50)]
    scopes = [ws_scope(headers=[(b"x-request-id", f"c-{i}".encode())]) for i in range(50)]
    tasks = [asyncio.create_task(c.run(app, s)) for c, s in zip(conns, scopes, strict=True)]
    await asyncio.gather(*(conn.waiting.wait() for conn in conns))
    assert logger.records == []  # written when the connection ends
    release.set()
    await asyncio.gather(*tasks)
    assert len(logger.records) == 50
    for _, _, fields in logger.records:
        expected = int(fields["request_id"][2:]) % 5
        assert fields["messages_received"] == fields["messages_sent"] == expected


async def test_messages_pass_through_unchanged() -> None:
    scripted: list[str | bytes] = ["a", b"\x00", "c"]
    bare = FakeConnection(scripted)
    seen_bare: list[Message] = []
    await bare.run(recording(close_after_one_app, seen_bare))

    wrapped = FakeConnection(scripted)
    seen_wrapped: list[Message] = []
    await wrapped.run(
        AccessLogMiddleware(recording(close_after_one_app, seen_wrapped), logger=RecordingLogger())
    )
    assert snapshot(wrapped.sent) == snapshot(bare.sent)
    assert snapshot(seen_wrapped) == snapshot(seen_bare)
    assert same_messages(seen_wrapped, wrapped.received)


async def test_a_failing_logger_never_reaches_the_connection() -> None:
    class Broken:
        def info(self, event: str, **fields: Any) -> None:
            raise RuntimeError("disk full")

    conn = FakeConnection(["x"])
    await conn.run(AccessLogMiddleware(echo_app, logger=Broken()))
    assert [m["type"] for m in conn.sent] == ["websocket.accept", "websocket.send"]


async def test_default_logger_writes_one_redacted_json_line(json_logs: io.StringIO) -> None:
    app = RequestIdMiddleware(AccessLogMiddleware(routed(echo_app, ROUTE)))
    scope = ws_scope(
        "/ws/bob@example.com",
        query=b"api_key=s3cret",
        headers=[(b"x-request-id", b"json-ws")],
    )
    await FakeConnection(["x"]).run(app, scope)
    [line] = [entry for entry in lines(json_logs) if entry["logger"] == "asgi_observe.access"]
    assert (line["level"], line["event"], line["request_id"]) == ("info", "websocket", "json-ws")
    assert line["outcome"] == "accepted"
    assert line["messages_received"] == 1
    assert "s3cret" not in json_logs.getvalue()
    assert "bob@example.com" not in json_logs.getvalue()
    assert set(line) - {"event", "level", "logger", "timestamp"} <= set(WEBSOCKET_FIELD_NAMES)
