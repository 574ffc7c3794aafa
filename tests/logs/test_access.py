"""AccessLogMiddleware: one safe, complete line per HTTP request."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from structlog.typing import EventDict

from asgi_observe import instrument, pii
from asgi_observe.logs import access as access_log
from asgi_observe.logs import config as asgi_logging
from asgi_observe.logs import processors as log_processors
from asgi_observe.logs.access import MAX_PATH, AccessLogMiddleware
from asgi_observe.logs.config import configure_logging
from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.settings import Settings
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.logs.support import RecordingLogger, json_logs, lines, restore_logging
from tests.support import http_get, run_uvicorn

__all__ = ["json_logs", "restore_logging"]  # fixtures used below

FIELDS = {
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "client_ip",
    "user_agent",
    "response_size",
    "request_id",
    "trace_id",
    "span_id",
}


def _app() -> ASGIApp:
    async def item(request: Request) -> PlainTextResponse:
        await asyncio.sleep(0)
        return PlainTextResponse(f"item {request.path_params.get('item_id', '')}")

    async def missing(request: Request) -> Response:
        return Response("gone", status_code=410)

    async def boom(request: Request) -> Response:
        raise RuntimeError("failed for bob@example.com")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"abc", b"defg", b""):
                yield chunk

        return StreamingResponse(chunks())

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/gone", missing),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/metrics", item),
        ]
    )


def _client(app: ASGIApp, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=app, raise_app_exceptions=raise_app_exceptions, client=("203.0.113.9", 4000)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_one_line_with_every_field() -> None:
    logger = RecordingLogger()
    app = RequestIdMiddleware(AccessLogMiddleware(_app(), logger=logger))
    async with _client(app) as client:
        response = await client.get(
            "/items/42?page=2", headers={"User-Agent": "probe/1.0", "X-Request-ID": "rid-1"}
        )
    assert response.status_code == 200
    [(level, event, fields)] = logger.records
    assert (level, event) == ("info", "request")
    assert set(fields) == FIELDS
    assert fields["method"] == "GET"
    assert fields["path"] == "/items/42?page=2"
    assert fields["route"] == "/items/{item_id}"
    assert fields["status"] == 200
    assert isinstance(fields["duration_ms"], float)
    assert fields["duration_ms"] >= 0
    assert fields["client_ip"] == "203.0.113.9"
    assert fields["user_agent"] == "probe/1.0"
    assert fields["response_size"] == len(b"item 42")
    assert fields["request_id"] == "rid-1"
    assert fields["trace_id"] is None
    assert fields["span_id"] is None


@pytest.mark.parametrize(
    ("path", "status", "level", "route"),
    [
        ("/items/1", 200, "info", "/items/{item_id}"),
        ("/gone", 410, "warning", "/gone"),
        ("/nowhere", 404, "warning", None),
        ("/boom", 500, "error", "/boom"),
    ],
)
async def test_level_follows_status(path: str, status: int, level: str, route: str | None) -> None:
    logger = RecordingLogger()
    async with _client(
        AccessLogMiddleware(_app(), logger=logger), raise_app_exceptions=False
    ) as client:
        response = await client.get(path)
    assert response.status_code == status
    [(got_level, _, fields)] = logger.records
    assert (got_level, fields["status"], fields["route"]) == (level, status, route)


async def test_app_exception_is_logged_redacted_and_reraised_unchanged() -> None:
    logger = RecordingLogger()
    error = ValueError("card 4111 1111 1111 1111 declined")

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    async with _client(AccessLogMiddleware(raw_app, logger=logger)) as client:
        with pytest.raises(ValueError, match="declined") as info:
            await client.get("/pay")
    assert info.value is error
    [(level, _, fields)] = logger.records
    assert (level, fields["status"]) == ("error", 500)
    assert fields["error"] == "ValueError: card [REDACTED_CC] declined"


async def test_streamed_body_sizes_add_up() -> None:
    logger = RecordingLogger()
    async with _client(AccessLogMiddleware(_app(), logger=logger)) as client:
        response = await client.get("/stream")
    assert response.content == b"abcdefg"
    assert logger.records[0][2]["response_size"] == 7


async def test_line_is_written_when_the_response_completes_not_after_background_tasks() -> None:
    logger = RecordingLogger()
    release = asyncio.Event()

    async def background() -> None:
        await release.wait()

    async def with_task(request: Request) -> PlainTextResponse:
        return PlainTextResponse("done", background=BackgroundTask(background))

    middleware = AccessLogMiddleware(Starlette(routes=[Route("/task", with_task)]), logger=logger)
    lines_when_final_body_forwarded: list[int] = []
    sent_done = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            lines_when_final_body_forwarded.append(len(logger.records))
            sent_done.set()

    started = time.perf_counter()
    call = asyncio.create_task(middleware(_scope("/task"), _receive_nothing, send))
    try:
        await sent_done.wait()
        until_sent_ms = (time.perf_counter() - started) * 1000.0
        # The background task is still blocked, and the line is already there.
        assert not call.done()
        assert lines_when_final_body_forwarded == [1]
        [(level, _, fields)] = logger.records
        assert (level, fields["status"], fields["route"]) == ("info", 200, "/task")
        assert fields["response_size"] == len(b"done")
        assert fields["duration_ms"] <= until_sent_ms
    finally:
        release.set()
        await call
    assert len(logger.records) == 1


async def test_a_client_finds_the_line_as_soon_as_it_has_its_response() -> None:
    logger = RecordingLogger()
    release = threading.Event()

    async def with_task(request: Request) -> PlainTextResponse:
        task = BackgroundTask(asyncio.to_thread, release.wait, 10)
        return PlainTextResponse("done", background=task)

    app = AccessLogMiddleware(Starlette(routes=[Route("/task", with_task)]), logger=logger)
    with run_uvicorn(app) as server:
        try:
            status, _, body = await asyncio.to_thread(http_get, f"{server.url}/task")
            # No polling: the line was written before the response's last byte left.
            assert (status, body) == (200, b"done")
            assert [(r[2]["path"], r[2]["status"]) for r in logger.records] == [("/task", 200)]
        finally:
            release.set()  # before the server shuts down, which waits for the task
    assert len(logger.records) == 1


async def test_final_chunk_counts_in_the_size_and_the_line_precedes_it() -> None:
    logger = RecordingLogger()

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defg"})

    middleware = AccessLogMiddleware(raw_app, logger=logger)
    seen: list[tuple[int, int]] = []

    async def send(message: Message) -> None:
        seen.append((len(message.get("body", b"")), len(logger.records)))

    await middleware(_scope("/upload"), _receive_nothing, send)
    assert seen == [(0, 0), (3, 0), (4, 1)]
    [(_, _, fields)] = logger.records
    assert (fields["status"], fields["response_size"]) == (201, 7)


async def test_failing_background_task_writes_no_second_line() -> None:
    logger = RecordingLogger()
    error = RuntimeError("background job failed")

    async def background() -> None:
        raise error

    async def with_task(request: Request) -> PlainTextResponse:
        return PlainTextResponse("done", background=BackgroundTask(background))

    middleware = AccessLogMiddleware(Starlette(routes=[Route("/task", with_task)]), logger=logger)
    with pytest.raises(RuntimeError) as info:
        await _call(middleware, _scope("/task"))
    assert info.value is error
    [(level, _, fields)] = logger.records
    assert (level, fields["status"], fields["response_size"]) == ("info", 200, 4)
    assert "error" not in fields


async def test_app_raising_mid_response_logs_the_status_already_sent() -> None:
    logger = RecordingLogger()
    error = ConnectionError("upstream went away")

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise error

    with pytest.raises(ConnectionError) as info:
        await _call(AccessLogMiddleware(raw_app, logger=logger), _scope("/stream"))
    assert info.value is error
    [(level, _, fields)] = logger.records
    assert (level, fields["status"], fields["response_size"]) == ("info", 200, 7)
    assert fields["error"] == "ConnectionError: upstream went away"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"token=abc&page=2", "token=[REDACTED]&page=2"),
        (b"access_token=abc", "access_token=[REDACTED]"),
        (b"API-Key=abc&Password=x", "API-Key=[REDACTED]&Password=[REDACTED]"),
        (b"code=oauth-code&state=s1", "code=[REDACTED]&state=s1"),
        (
            b"X-Amz-Signature=deadbeef&X-Amz-Expires=60",
            "X-Amz-Signature=[REDACTED]&X-Amz-Expires=60",
        ),
        (b"email=bob%40example.com", "email=[REDACTED_EMAIL]"),
        (b"email=bob@example.com", "email=[REDACTED_EMAIL]"),
        (b"bob%40example.com", "[REDACTED_EMAIL]"),
        (b"q=caf%C3%A9&n=1", "q=caf%C3%A9&n=1"),
        (b"flag&x=", "flag&x="),
        (b"a=%ZZ", "a=%ZZ"),
    ],
)
async def test_query_redaction(query: bytes, expected: str) -> None:
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    await _call(middleware, _scope("/items/1", query=query))
    await _call(middleware, _scope("/items/1", query=query))  # second time: from the cache
    assert [r[2]["path"] for r in logger.records] == [f"/items/1?{expected}"] * 2


async def test_pii_in_path_and_user_agent_is_redacted() -> None:
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    await _call(
        middleware,
        _scope(
            "/users/bob@example.com", headers=[(b"user-agent", b"bot (+mailto:ops@example.com)")]
        ),
    )
    fields = logger.records[0][2]
    assert fields["path"] == "/users/[REDACTED_EMAIL]"
    assert fields["user_agent"] == "bot (+mailto:[REDACTED_EMAIL])"


async def test_control_characters_cannot_forge_lines() -> None:
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    await _call(
        middleware,
        _scope(
            "/a\r\nlevel=error fake\x1b[31m\u2028x\x85",
            query=b"q=\n1",
            headers=[(b"user-agent", b"ua\r\n\x1b]0;title\x07 \xff")],
            method="G\nET",
        ),
    )
    fields = logger.records[0][2]
    for key in ("path", "user_agent", "method"):
        assert fields[key].isprintable(), fields[key]
    assert fields["path"] == "/a\\x0d\\x0alevel=error fake\\x1b[31m\\u2028x\\x85?q=\\x0a1"
    assert fields["user_agent"] == "ua\\x0d\\x0a\\x1b]0;title\\x07 \u00ff"


async def test_long_values_are_bounded() -> None:
    logger = RecordingLogger()
    await _call(
        AccessLogMiddleware(_app(), logger=logger),
        _scope("/" + "a" * 10_000, query=b"&".join([b"k=v"] * 5000)),
    )
    path = logger.records[0][2]["path"]
    assert len(path) <= MAX_PATH + 3
    assert path.endswith("...")


async def test_default_exclude_paths_and_custom_ones() -> None:
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    for path in ("/metrics", "/health/live", "/health/ready"):
        await _call(middleware, _scope(path))
    assert logger.records == []
    custom = AccessLogMiddleware(_app(), logger=logger, exclude_paths=["/items/1"])
    await _call(custom, _scope("/items/1"))
    await _call(custom, _scope("/metrics"))
    assert [r[2]["path"] for r in logger.records] == ["/metrics"]


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/api/health/live", "/api"),  # uvicorn --root-path, Starlette 1.x Mount
        ("/health/live", "/api"),  # servers that leave root_path out of path
        ("/api/metrics", "/api"),
        ("/metrics", ""),
    ],
)
async def test_exclude_paths_are_relative_to_the_root_path(path: str, root_path: str) -> None:
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    await _call(middleware, {**_scope(path), "root_path": root_path})
    await _call(middleware, {**_scope("/api/items/1"), "root_path": "/api"})
    assert [r[2]["path"] for r in logger.records] == ["/api/items/1"]


async def test_exclude_paths_inside_a_mount() -> None:
    logger = RecordingLogger()
    inner = AccessLogMiddleware(_app(), logger=logger, exclude_paths=["/items/1"])
    async with _client(Starlette(routes=[Mount("/api", app=inner)])) as client:
        excluded = await client.get("/api/items/1")
        logged = await client.get("/api/items/2")
    assert (excluded.status_code, logged.status_code) == (200, 200)
    assert [r[2]["path"] for r in logger.records] == ["/api/items/2"]


async def test_trusted_proxies_decide_client_ip() -> None:
    logger = RecordingLogger()
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    middleware = AccessLogMiddleware(_app(), logger=logger, trusted_proxies=trusted)
    forwarded = [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.4")]
    await _call(middleware, _scope("/items/1", headers=forwarded, client=("10.1.2.3", 1)))
    await _call(middleware, _scope("/items/1", headers=forwarded, client=("203.0.113.5", 1)))
    assert [r[2]["client_ip"] for r in logger.records] == ["198.51.100.4", "203.0.113.5"]


async def test_client_ip_of_each_peer_when_seen_again_and_with_forwarded_headers() -> None:
    # The peer's address is memoised by host when no proxy is trusted: repeated and
    # alternating peers, the normalised form, a malformed host and a forwarded header
    # (ignored without trusted proxies) must give what `client_ip` gives each time.
    logger = RecordingLogger()
    middleware = AccessLogMiddleware(_app(), logger=logger)
    forwarded = [(b"x-forwarded-for", b"6.6.6.6")]
    peers: list[Any] = [
        ("203.0.113.5", 1),
        ("198.51.100.4", 2),
        ("203.0.113.5", 3),
        ["2001:DB8::0001", 4],
        ("2001:DB8::0001", 5),
        ("not an address", 6),
        None,
        ("198.51.100.4", 7),
    ]
    for peer in peers:
        await _call(middleware, _scope("/items/1", headers=forwarded, client=peer))
    assert [r[2]["client_ip"] for r in logger.records] == [
        "203.0.113.5",
        "198.51.100.4",
        "203.0.113.5",
        "2001:db8::1",
        "2001:db8::1",
        None,
        None,
        "198.51.100.4",
    ]


async def test_trace_and_span_ids_of_the_current_span() -> None:
    logger = RecordingLogger()
    tracer = TracerProvider().get_tracer("test")
    inner = AccessLogMiddleware(_app(), logger=logger)

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("server") as span:
            context = span.get_span_context()
            scope["test.ids"] = (format(context.trace_id, "032x"), format(context.span_id, "016x"))
            await inner(scope, receive, send)

    scope = _scope("/items/1")
    await _call(traced, scope)
    fields = logger.records[0][2]
    assert (fields["trace_id"], fields["span_id"]) == scope["test.ids"]


async def test_lifespan_passes_through() -> None:
    """Websocket connections get a line of their own: see tests/logs/test_websocket.py."""
    logger = RecordingLogger()
    seen: list[str] = []

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = AccessLogMiddleware(raw_app, logger=logger)
    await _call(middleware, {"type": "lifespan"})
    assert seen == ["lifespan"]
    assert logger.records == []


class BrokenLogger:
    def info(self, event: str, **fields: Any) -> None:
        raise OSError("disk full")

    warning = error = info


async def test_a_failing_logger_never_reaches_the_request(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        async with _client(AccessLogMiddleware(_app(), logger=BrokenLogger())) as client:
            first = await client.get("/items/1")
            second = await client.get("/items/2")
    assert (first.status_code, second.status_code) == (200, 200)
    reports = [r for r in caplog.records if "could not write the access log" in r.getMessage()]
    assert len(reports) == 1  # rate-limited


async def test_concurrent_requests_are_kept_apart() -> None:
    logger = RecordingLogger()
    app = RequestIdMiddleware(AccessLogMiddleware(_app(), logger=logger))
    async with _client(app) as client:
        await asyncio.gather(
            *(client.get(f"/items/{n}", headers={"X-Request-ID": f"r-{n}"}) for n in range(50))
        )
    assert len(logger.records) == 50
    for _, _, fields in logger.records:
        assert fields["path"] == f"/items/{fields['request_id'][2:]}"


async def test_default_logger_writes_one_redacted_json_line(json_logs: io.StringIO) -> None:
    app = RequestIdMiddleware(AccessLogMiddleware(_app()))
    async with _client(app) as client:
        await client.get("/items/7?api_key=s3cret", headers={"X-Request-ID": "json-1"})
    [line] = [entry for entry in lines(json_logs) if entry["logger"] == "asgi_observe.access"]
    assert set(line) >= FIELDS
    assert line["path"] == "/items/7?api_key=[REDACTED]"
    assert (line["level"], line["event"], line["request_id"]) == ("info", "request", "json-1")
    assert "s3cret" not in json_logs.getvalue()


async def test_console_line_stays_one_line(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(environment="development"), stream=stream, colors=False)
    await _call(AccessLogMiddleware(_app()), _scope("/a\nb", headers=[(b"user-agent", b"x\ny")]))
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "request" in output
    assert "status=404" in output


async def _call(app: ASGIApp, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def _receive_nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _scope(
    path: str,
    *,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "GET",
    client: tuple[str, int] = ("127.0.0.1", 5000),
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": query,
        "headers": headers or [],
        "client": client,
        "server": ("127.0.0.1", 80),
    }


# --- The cheaper route of the default logger: same lines as the generic pipeline ---


def _access_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if '"logger":"asgi_observe.access"' in line]


def _freeze_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed timestamps and durations, so lines written twice can be compared whole."""
    monkeypatch.setattr(
        log_processors,
        "time",
        SimpleNamespace(
            time=lambda: 1_700_000_000.123456, strftime=time.strftime, gmtime=time.gmtime
        ),
    )
    monkeypatch.setattr(access_log, "perf_counter", itertools.cycle([10.0, 10.0123456]).__next__)


class _Binding:
    """Binds structlog context around the app, as an application middleware would."""

    def __init__(self, app: ASGIApp, **bound: Any) -> None:
        self.app = app
        self.bound = bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = structlog.contextvars.bind_contextvars(**self.bound)
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


class _FixedIds(IdGenerator):
    """The same ids for every span, so a traced request can be replayed line for line."""

    def __init__(self, trace_id: int = 0x4BF92F3577B34DA6A3CE929D0E0E4736) -> None:
        self.trace_id = trace_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return 0x00F067AA0BA902B7


class _CardLikeIds(_FixedIds):
    """A span id of digits only that is a Luhn-valid card number: redaction takes it."""

    def generate_span_id(self) -> int:
        return 0x4111111111111111


def _traced(app: ASGIApp, *, ids: IdGenerator | None = None, sampled: bool = True) -> ASGIApp:
    tracer = TracerProvider(
        id_generator=ids or _FixedIds(), sampler=ALWAYS_ON if sampled else ALWAYS_OFF
    ).get_tracer("test")

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("server"):
            await app(scope, receive, send)

    return traced


BOUND = {
    "user": "alice@example.com",  # personal data in a bound value
    "api_key": "k-123",  # a sensitive key
    "tenant": "acme",
    "attempt": 3,
    "ratio": float("inf"),
    "nested": {"password": "hunter2", "phones": ["+62 812-3456-7890"]},
    "raw": b"\xff",
    "logger": "spoofed",  # keys the pipeline owns: overwritten in place
    "timestamp": "spoofed",
    "request_id": "bound-id",  # the line's own request_id wins
}

UNSAMPLED = _traced  # a marker: the scenario's span is not sampled
CARD_SPAN = _CardLikeIds()
DIGIT_TRACE = _FixedIds(trace_id=0x11112222333344445555666677778888)
RID = (b"x-request-id", b"rid-1")

SCENARIOS: list[tuple[str, str, list[tuple[bytes, bytes]], dict[str, Any], object]] = [
    # (id, path with query, headers, bound context, span: False, True, UNSAMPLED or ids)
    ("plain", "/items/42?page=2", [(b"user-agent", b"probe/1.0")], {}, False),
    ("no-query", "/items/42", [(b"user-agent", b"probe/1.0")], {}, False),
    ("sensitive-bound", "/items/5", [], {"api_key": "k-1", "Authorization": "Bearer x"}, True),
    ("card-request-id", "/items/6", [(b"x-request-id", b"4111111111111111")], {}, False),
    (
        "hex-request-id",
        "/items/6",
        [(b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736")],
        {},
        False,
    ),
    ("non-ascii-agent", "/items/3", [(b"user-agent", "caf\u00e9 \u2603".encode())], {}, True),
    ("non-ascii-path", "/caf\u00e9/\u2603", [], {"who": "Zo\u00eb"}, False),
    ("unsampled", "/items/4", [(b"user-agent", b"probe/1.0")], {"tenant": "acme"}, UNSAMPLED),
    ("card-span-id", "/items/4", [], {}, CARD_SPAN),
    ("digit-trace-id", "/items/4", [], {}, DIGIT_TRACE),
    # escaping a control character can complete what redaction took for no e-mail
    ("escaped-agent", "/items/2", [(b"user-agent", b"ua\x1b@7y.cz")], {}, False),
    ("escaped-path", "/a\x1b@7y.cz", [], {}, False),
    ("unknown-method", "/items/1", [(b"x-method", b"PROPFIND")], {}, False),
    ("bound-error-key", "/items/2", [], {"error": "bob@example.com", "event": "spoofed"}, False),
    (
        "pii",
        "/users/bob@example.com?email=bob%40example.com&token=t0k3n&pwd=hunter2&n=555-123-4567",
        [(b"user-agent", b"bot (+mailto:ops@example.com) Bearer abcdefghijkl")],
        {},
        False,
    ),
    ("bound", "/items/7", [(b"user-agent", b"probe/1.0")], BOUND, False),
    ("traced", "/items/8", [], {"tenant": "acme"}, True),
    ("gone", "/gone?x=1", [(b"user-agent", b"probe/1.0")], {}, True),
    ("no-route", "/nowhere", [], {}, False),
    ("boom", "/boom", [(b"user-agent", b"probe/1.0")], {"tenant": "acme"}, True),
    ("control", "/a\nb", [(b"user-agent", b"ua\x1b[31m\r\n")], {}, False),
    ("exc-info-bound", "/items/9", [], {"exc_info": True}, False),
]


@pytest.mark.parametrize(
    "scenario", [pytest.param(scenario[1:], id=scenario[0]) for scenario in SCENARIOS]
)
async def test_default_logger_lines_equal_the_generic_pipeline(
    json_logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    scenario: tuple[str, list[tuple[bytes, bytes]], dict[str, Any], object],
) -> None:
    path, headers, bound, span = scenario
    _freeze_clocks(monkeypatch)
    direct: list[str] = []

    def spying(name: str) -> Any:
        write = getattr(asgi_logging, name)

        def spy(*args: Any, **kwargs: Any) -> bool:
            written: bool = write(*args, **kwargs)
            if written:
                direct.append(name)
            return written

        return spy

    def declining(*args: Any, **kwargs: Any) -> bool:
        return False

    app: ASGIApp = _Binding(AccessLogMiddleware(_app()), **bound)
    if span is UNSAMPLED:
        app = _traced(app, sampled=False)
    elif isinstance(span, IdGenerator):
        app = _traced(app, ids=span)
    elif span:
        app = _traced(app)
    app = RequestIdMiddleware(app)
    path, _, query = path.partition("?")
    if not any(name == b"x-request-id" for name, _ in headers):
        headers = [*headers, RID]
    method = dict(headers).get(b"x-method", b"GET").decode()

    def scope() -> Scope:
        return _scope(path, query=query.encode(), headers=headers, method=method)

    for name in ("write_event", "write_prepared_event"):
        monkeypatch.setattr(access_log, name, spying(name))
    with contextlib.suppress(RuntimeError):
        await _call(app, scope())
    fast = json_logs.getvalue()
    json_logs.seek(0)
    json_logs.truncate()
    for name in ("write_event", "write_prepared_event"):
        monkeypatch.setattr(access_log, name, declining)
    with contextlib.suppress(RuntimeError):
        await _call(app, scope())
    generic = json_logs.getvalue()

    assert direct == ["write_prepared_event"]  # the first line did take the direct route
    [fast_line] = _access_lines(fast)
    [generic_line] = _access_lines(generic)
    assert list(json.loads(fast_line).items()) == list(json.loads(generic_line).items())
    assert fast_line == generic_line
    entry = json.loads(fast_line)
    assert set(entry) >= FIELDS | {"event", "level", "logger", "timestamp"}
    assert set(entry) - {"event", "level", "logger", "timestamp"} - set(bound) <= set(
        access_log.FIELD_NAMES
    )
    assert entry["logger"] == "asgi_observe.access"
    assert (entry["trace_id"] is not None) is bool(span)
    _check_redacted_ids(entry, dict(headers)[b"x-request-id"].decode(), span)


def _check_redacted_ids(entry: dict[str, Any], request_id: str, span: object) -> None:
    """What redaction made of the values the direct route does not redact per line."""
    if request_id == "4111111111111111":
        assert entry["request_id"] == "[REDACTED_CC]"
    else:
        assert entry["request_id"] == request_id
    if span is CARD_SPAN:
        assert entry["span_id"] == "[REDACTED_CC]"
    if span is DIGIT_TRACE:
        assert entry["trace_id"] == "11112222333344445555666677778888"


async def test_pii_and_levels_on_the_direct_route(json_logs: io.StringIO) -> None:
    app = _Binding(AccessLogMiddleware(_app()), **BOUND)
    await _call(
        app,
        _scope(
            "/users/bob@example.com",
            query=b"pwd=hunter2&token=t0k3n",
            headers=[(b"user-agent", b"bot (+mailto:ops@example.com)")],
        ),
    )
    await _call(app, _scope("/gone"))
    with pytest.raises(RuntimeError):
        await _call(app, _scope("/boom"))
    first, gone, boom = [e for e in lines(json_logs) if e["logger"] == "asgi_observe.access"]
    assert first["path"] == "/users/[REDACTED_EMAIL]?pwd=[REDACTED]&token=[REDACTED]"
    assert first["user_agent"] == "bot (+mailto:[REDACTED_EMAIL])"
    assert (first["user"], first["api_key"]) == ("[REDACTED_EMAIL]", "[REDACTED]")
    assert first["nested"] == {"password": "[REDACTED]", "phones": ["[REDACTED_PHONE]"]}
    assert (first["ratio"], first["raw"], first["logger"]) == (
        "inf",
        "\\xff",
        "asgi_observe.access",
    )
    # the line's keys, then event, then the bound ones in context order, level last
    assert list(first)[:12] == [*[k for k in access_log.FIELD_NAMES if k != "error"], "event"]
    assert set(list(first)[12:-1]) == set(BOUND) - {"request_id"}
    assert list(first)[-1] == "level"
    assert [(e["level"], e["status"]) for e in (first, gone, boom)] == [
        ("warning", 404),
        ("warning", 410),
        ("error", 500),
    ]
    assert boom["error"] == "RuntimeError: failed for [REDACTED_EMAIL]"
    for secret in ("bob@", "hunter2", "t0k3n", "ops@", "alice@", "k-123"):
        assert secret not in json_logs.getvalue()


async def test_level_filter_is_honoured_on_the_direct_route(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(environment="production", log_level="WARNING"), stream=stream)
    middleware = AccessLogMiddleware(_app())
    await _call(middleware, _scope("/items/1"))
    await _call(middleware, _scope("/gone"))
    assert [(e["level"], e["path"]) for e in lines(stream)] == [("warning", "/gone")]


async def test_reconfiguration_reaches_an_existing_middleware(restore_logging: None) -> None:
    first, second, console = io.StringIO(), io.StringIO(), io.StringIO()
    configure_logging(Settings(environment="production"), stream=first)
    middleware = AccessLogMiddleware(_app())
    await _call(middleware, _scope("/items/1"))
    configure_logging(Settings(environment="production"), stream=second)
    await _call(middleware, _scope("/items/2"))
    configure_logging(Settings(environment="development"), stream=console, colors=False)
    await _call(middleware, _scope("/items/3"))
    assert [e["path"] for e in lines(first)] == ["/items/1"]
    assert [e["path"] for e in lines(second)] == ["/items/2"]
    assert "path=/items/3" in console.getvalue()
    assert not console.getvalue().startswith("{")


async def test_capture_logs_and_a_direct_structlog_configure_are_honoured(
    json_logs: io.StringIO,
) -> None:
    middleware = AccessLogMiddleware(_app())
    with structlog.testing.capture_logs() as captured:
        await _call(middleware, _scope("/items/1", query=b"token=t"))
    assert [(e["event"], e["log_level"], e["path"]) for e in captured] == [
        ("request", "info", "/items/1?token=[REDACTED]")
    ]
    assert "asgi_observe.access" not in json_logs.getvalue()

    def tag(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["tagged"] = True
        return event_dict

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[tag, *processors])
    await _call(middleware, _scope("/items/2"))
    [entry] = [e for e in lines(json_logs) if e["logger"] == "asgi_observe.access"]
    assert (entry["path"], entry["tagged"]) == ("/items/2", True)


async def test_a_failing_direct_route_never_reaches_the_request(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("context merge broke")

    monkeypatch.setattr(asgi_logging, "merge_contextvars", broken)
    monkeypatch.setattr(asgi_logging, "get_contextvars", broken)
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        async with _client(AccessLogMiddleware(_app())) as client:
            response = await client.get("/items/1")
    assert response.status_code == 200
    assert any("could not write the access log" in r.getMessage() for r in caplog.records)


async def test_a_pattern_of_our_own_reaches_every_value_on_the_direct_route(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `PII_PATTERNS` changed, values the default patterns leave alone (the method,
    a hex request id, the client address, the user agent, the route) are redacted too,
    as the general pipeline redacts them."""
    _freeze_clocks(monkeypatch)
    app = RequestIdMiddleware(AccessLogMiddleware(_app()))
    headers = [
        (b"user-agent", b"probe/1.0"),
        (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
    ]
    saved = list(pii.PII_PATTERNS)
    try:
        await _call(app, _scope("/items/7", headers=headers))  # memoised as plain first
        pii.PII_PATTERNS.append((re.compile(r"GET|probe|4bf9|127\.0|items|\{"), "[MINE]"))
        await _call(app, _scope("/items/7", headers=headers))
        fast = _access_lines(json_logs.getvalue())[-1]
        json_logs.seek(0)
        json_logs.truncate()
        for name in ("write_event", "write_prepared_event"):
            monkeypatch.setattr(access_log, name, lambda *args, **kwargs: False)
        await _call(app, _scope("/items/7", headers=headers))
        generic = _access_lines(json_logs.getvalue())[-1]
    finally:
        pii.PII_PATTERNS[:] = saved
    assert fast == generic
    entry = json.loads(fast)
    assert (entry["method"], entry["user_agent"], entry["client_ip"]) == (
        "[MINE]",
        "[MINE]/1.0",
        "[MINE].0.1",
    )
    assert entry["request_id"].startswith("[MINE]")
    assert entry["route"] == "/[MINE]/[MINE]item_id}"


async def test_a_span_context_passed_in_is_used_without_a_current_span(
    json_logs: io.StringIO,
) -> None:
    middleware = AccessLogMiddleware(_app())
    context = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    middleware._emit(_scope("/items/1"), 200, 3, 0.001, None, span_context=context)
    middleware._emit(_scope("/items/2"), 200, 3, 0.001, None)  # no span: looked up, none
    first, second = [e for e in lines(json_logs) if e["logger"] == "asgi_observe.access"]
    assert (first["trace_id"], first["span_id"]) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert (second["trace_id"], second["span_id"]) == (None, None)


async def test_incoming_request_ids_are_redacted_on_the_one_layer_path(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct route leaves alone only ids no default pattern can match: an incoming
    id the validator accepts can still be a card or phone number, and is redacted."""
    direct: list[bool] = []
    write = asgi_logging.write_prepared_event

    def spy(*args: Any) -> bool:
        written = write(*args)
        direct.append(written)
        return written

    monkeypatch.setattr(access_log, "write_prepared_event", spy)
    served = instrument(
        _app(),
        Settings(environment="production"),
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(sampler=ALWAYS_OFF),
    )
    sent = ["4111111111111111", "555-123-4567", "0123456789abcdefABCDEF", None]
    async with _client(served) as client:
        for request_id in sent:
            headers = {"x-request-id": request_id} if request_id is not None else {}
            response = await client.get("/items/1", headers=headers)
            assert response.status_code == 200
    access = [e for e in lines(json_logs) if e["logger"] == "asgi_observe.access"]
    assert direct == [True] * len(sent)  # every line took the direct route
    ids = [entry["request_id"] for entry in access]
    assert ids[:3] == ["[REDACTED_CC]", "[REDACTED_PHONE]", "0123456789abcdefABCDEF"]
    assert re.fullmatch(r"[0-9a-f]{32}", ids[3])  # generated here, written as is


async def test_a_reconfiguration_after_configure_logging_takes_the_access_line(
    json_logs: io.StringIO,
) -> None:
    """Whatever the user configures afterwards -- a logger factory, structlog's
    defaults -- the access line goes through it, not through the direct route."""
    middleware = AccessLogMiddleware(_app())
    seen: list[str] = []

    class Collecting:
        name = "collecting"

        def msg(self, message: str) -> None:
            seen.append(message)

        info = warning = error = msg

    structlog.configure(logger_factory=lambda *args: Collecting())
    await _call(middleware, _scope("/items/1"))
    first = json.loads(seen[0])
    assert (first["path"], first["logger"]) == ("/items/1", "collecting")

    structlog.reset_defaults()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=lambda *args: Collecting(),
    )
    await _call(middleware, _scope("/items/2"))
    last = json.loads(seen[-1])
    assert (last["event"], last["path"]) == ("request", "/items/2")
    assert "level" not in last  # the user's chain, not ours
    assert "asgi_observe.access" not in json_logs.getvalue()


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [(1, 1), (2**128 - 1, 2**64 - 1), (0x0A << 120, 0x0B << 56), (0xABC, 0xDEF)],
)
async def test_trace_and_span_ids_are_written_with_every_leading_zero(
    json_logs: io.StringIO, trace_id: int, span_id: int
) -> None:
    context = SpanContext(
        trace_id=trace_id, span_id=span_id, is_remote=False, trace_flags=TraceFlags(0)
    )
    AccessLogMiddleware(_app())._emit(_scope("/items/1"), 200, 3, 0.001, None, span_context=context)
    (entry,) = [e for e in lines(json_logs) if e["logger"] == "asgi_observe.access"]
    assert (entry["trace_id"], entry["span_id"]) == (f"{trace_id:032x}", f"{span_id:016x}")
