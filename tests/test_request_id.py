"""RequestIdMiddleware: accept or generate, echo, bind, reset -- on every path."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_observe.request_id import (
    SCOPE_KEY,
    RequestIdMiddleware,
    generate_request_id,
    get_request_id,
    is_valid_request_id,
)
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.support import http_get, run_uvicorn

HEX32 = re.compile(r"[0-9a-f]{32}")


def _seen_app() -> tuple[ASGIApp, list[dict[str, Any]]]:
    """A Starlette app recording what the request id looked like from inside."""
    seen: list[dict[str, Any]] = []

    async def echo(request: Request) -> PlainTextResponse:
        await asyncio.sleep(0)  # let concurrent requests interleave
        seen.append(
            {
                "var": get_request_id(),
                "scope": request.scope.get(SCOPE_KEY),
                "structlog": structlog.contextvars.get_contextvars().get("request_id"),
            }
        )
        return PlainTextResponse(get_request_id() or "")

    async def boom(request: Request) -> Response:
        raise RuntimeError("inner failure")

    app = Starlette(routes=[Route("/echo", echo), Route("/boom", boom)])
    return app, seen


def _client(app: ASGIApp, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_generates_an_id_when_none_is_sent() -> None:
    app, seen = _seen_app()
    async with _client(RequestIdMiddleware(app)) as client:
        response = await client.get("/echo")
    rid = response.headers["x-request-id"]
    assert HEX32.fullmatch(rid)
    assert uuid.UUID(rid).version == 4
    assert response.text == rid
    assert seen == [{"var": rid, "scope": rid, "structlog": rid}]


@pytest.mark.parametrize(
    "incoming",
    [
        str(uuid.uuid4()),
        str(uuid.uuid1()),
        "0190a5c4-7b2e-7c3d-8e4f-5a6b7c8d9e0f",  # UUIDv7
        uuid.uuid4().hex,  # nginx $request_id
        "4bf92f3577b34da6a3ce929d0e0e4736",  # W3C trace id
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # ULID
        "req-123_abc.def:1",
        "a" * 128,
        "1",
    ],
)
async def test_accepts_valid_incoming_ids(incoming: str) -> None:
    app, seen = _seen_app()
    async with _client(RequestIdMiddleware(app)) as client:
        response = await client.get("/echo", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming
    assert seen[0]["var"] == incoming


@pytest.mark.parametrize(
    "raw",
    [
        b"abc\r\nSet-Cookie: x=1",
        b"abc\tdef",
        b"with space",
        "caf\u00e9".encode(),
        b"\xff\xfe\x00bad",
        b"a" * 129,
        b"a" * 10_000,
        b"",
        b'quote"d',
    ],
)
async def test_replaces_invalid_incoming_ids(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    app, seen = _seen_app()
    middleware = RequestIdMiddleware(app)
    scope_headers = [(b"x-request-id", raw)]
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = _http_scope("/echo", scope_headers)
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        await middleware(scope, receive, send)
    headers = dict(messages[0]["headers"])
    assert HEX32.fullmatch(headers[b"x-request-id"].decode())
    assert seen[0]["var"] == headers[b"x-request-id"].decode()
    warnings = [r for r in caplog.records if "rejected an invalid" in r.getMessage()]
    assert len(warnings) == 1
    assert "\n" not in warnings[0].getMessage()
    assert "\r" not in warnings[0].getMessage()


async def test_invalid_id_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = _seen_app()
    async with _client(RequestIdMiddleware(app)) as client:
        with caplog.at_level(logging.WARNING, logger="asgi_observe"):
            for _ in range(5):
                response = await client.get("/echo", headers={"X-Request-ID": "bad id"})
                assert response.status_code == 200
    assert sum("rejected an invalid" in r.getMessage() for r in caplog.records) == 1


async def test_first_of_duplicated_headers_wins() -> None:
    app, seen = _seen_app()
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    headers = [(b"x-request-id", b"first-id"), (b"x-request-id", b"second-id")]
    await RequestIdMiddleware(app)(_http_scope("/echo", headers), receive, send)
    assert seen[0]["var"] == "first-id"
    assert [v for k, v in messages[0]["headers"] if k == b"x-request-id"] == [b"first-id"]


async def test_echoed_on_500_from_inner_error_handler_and_exception_reraised() -> None:
    app, _ = _seen_app()
    async with _client(RequestIdMiddleware(app), raise_app_exceptions=False) as client:
        response = await client.get("/boom", headers={"X-Request-ID": "err-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "err-1"

    async with _client(RequestIdMiddleware(app)) as client:
        with pytest.raises(RuntimeError, match="inner failure"):
            await client.get("/boom")
    assert get_request_id() is None


async def test_raw_app_exception_propagates_unchanged_and_context_is_reset() -> None:
    error = ValueError("raw failure")

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        assert get_request_id() == "raw-1"
        raise error

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    with pytest.raises(ValueError, match="raw failure") as info:
        await RequestIdMiddleware(raw_app)(
            _http_scope("/", [(b"x-request-id", b"raw-1")]), receive, send
        )
    assert info.value is error
    assert get_request_id() is None
    assert "request_id" not in structlog.contextvars.get_contextvars()


async def test_context_is_reset_after_each_request() -> None:
    structlog.contextvars.bind_contextvars(request_id="outer")
    try:
        app, _ = _seen_app()
        async with _client(RequestIdMiddleware(app)) as client:
            await client.get("/echo")
        assert structlog.contextvars.get_contextvars()["request_id"] == "outer"
        assert get_request_id() is None
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


async def test_response_headers_are_not_mutated() -> None:
    shared_headers = [(b"content-type", b"text/plain")]

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": shared_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with _client(RequestIdMiddleware(raw_app)) as client:
        first = await client.get("/", headers={"X-Request-ID": "one"})
        second = await client.get("/", headers={"X-Request-ID": "two"})
    assert first.headers.get_list("x-request-id") == ["one"]
    assert second.headers.get_list("x-request-id") == ["two"]
    assert shared_headers == [(b"content-type", b"text/plain")]


async def _sent_headers(
    middleware: RequestIdMiddleware, request_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The raw header list of the ``http.response.start`` the server would put on the wire."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(_http_scope("/", request_headers), receive, send)
    return [tuple(item) for item in sent[0]["headers"]]


@pytest.mark.parametrize("name", [b"x-request-id", b"X-Request-ID", b"X-REQUEST-ID"])
async def test_an_id_the_app_set_wins_in_any_letter_case(name: bytes) -> None:
    shared_headers = [(b"content-type", b"text/plain"), (name, b"from-app")]

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope[SCOPE_KEY] == "incoming-1"  # logs and spans still carry this one
        await send({"type": "http.response.start", "status": 200, "headers": shared_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    headers = await _sent_headers(RequestIdMiddleware(raw_app), [(b"x-request-id", b"incoming-1")])
    assert headers == [(b"content-type", b"text/plain"), (name, b"from-app")]
    assert shared_headers == [(b"content-type", b"text/plain"), (name, b"from-app")]


@pytest.mark.parametrize("name", [b"x-correlation-id", b"X-Correlation-ID", b"X-CORRELATION-ID"])
async def test_an_id_the_app_set_wins_under_a_configured_header_name(name: bytes) -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(name, b"mine")]})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = RequestIdMiddleware(raw_app, header_name="X-Correlation-ID")
    assert await _sent_headers(middleware, []) == [(name, b"mine")]

    # A header that merely shares a prefix or the length is not the id header.
    async def other_app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-correlation-iz", b"1"), (b"x-correlation", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = await _sent_headers(
        RequestIdMiddleware(other_app, header_name="X-Correlation-ID"),
        [(b"x-correlation-id", b"req-9")],
    )
    assert sent == [
        (b"x-correlation-iz", b"1"),
        (b"x-correlation", b"2"),
        (b"x-correlation-id", b"req-9"),
    ]


def _raw_response(port: int, request_id: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            f"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: {request_id}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_id_the_app_set_is_the_only_one_on_the_wire() -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"X-REQUEST-ID", b"from-app"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    with run_uvicorn(RequestIdMiddleware(raw_app), lifespan="off") as server:
        response = _raw_response(server.port, "incoming-2")
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    ids = [line for line in head if line.lower().startswith(b"x-request-id:")]
    assert [line.split(b":", 1)[1].strip() for line in ids] == [b"from-app"]


async def test_custom_header_validator_and_generator() -> None:
    app, _seen = _seen_app()
    middleware = RequestIdMiddleware(
        app,
        header_name="X-Correlation-ID",
        validator=lambda value: value.startswith("ok-"),
        generator=lambda: "generated-1",
    )
    async with _client(middleware) as client:
        accepted = await client.get("/echo", headers={"X-Correlation-ID": "ok-7"})
        rejected = await client.get("/echo", headers={"X-Correlation-ID": "nope"})
    assert accepted.headers["x-correlation-id"] == "ok-7"
    assert rejected.headers["x-correlation-id"] == "generated-1"
    assert "x-request-id" not in accepted.headers


def _broken_validator(value: str) -> bool:
    raise ValueError("broken hook")


def _broken_generator() -> str:
    raise ValueError("broken hook")


async def test_broken_hooks_cannot_break_requests(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = _seen_app()
    middleware = RequestIdMiddleware(app, validator=_broken_validator, generator=_broken_generator)
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        async with _client(middleware) as client:
            response = await client.get("/echo", headers={"X-Request-ID": "fine"})
    assert response.status_code == 200
    assert HEX32.fullmatch(response.headers["x-request-id"])
    assert any("validator raised" in r.getMessage() for r in caplog.records)
    assert any("generator failed" in r.getMessage() for r in caplog.records)


async def test_generator_returning_an_unsafe_value_falls_back() -> None:
    app, _ = _seen_app()
    middleware = RequestIdMiddleware(app, generator=lambda: "bad\r\nvalue")
    async with _client(middleware) as client:
        response = await client.get("/echo")
    assert HEX32.fullmatch(response.headers["x-request-id"])


@pytest.mark.parametrize("name", ["", "X Request", "X-Request-ID\r\n", "caf\u00e9"])
def test_invalid_header_name_is_rejected_at_construction(name: str) -> None:
    app, _ = _seen_app()
    with pytest.raises(ValueError, match="header_name"):
        RequestIdMiddleware(app, header_name=name)


async def test_lifespan_passes_through_untouched() -> None:
    calls: list[Scope] = []

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)
        assert get_request_id() is None

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await RequestIdMiddleware(raw_app)(scope, receive, send)
    assert calls == [{"type": "lifespan", "asgi": {"version": "3.0"}}]


async def test_websocket_connections_get_an_id_echoed_on_accept() -> None:
    seen: list[str | None] = []

    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(get_request_id())
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})
        await send({"type": "websocket.close", "code": 1000})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "websocket", "path": "/ws", "headers": [], "client": None}
    await RequestIdMiddleware(ws_app)(scope, receive, send)
    rid = seen[0]
    assert rid is not None
    assert HEX32.fullmatch(rid)
    assert scope[SCOPE_KEY] == rid
    assert sent[0]["headers"] == [(b"x-app", b"1"), (b"x-request-id", rid.encode())]
    assert sent[1] == {"type": "websocket.close", "code": 1000}


async def test_an_outer_instance_wins() -> None:
    app, seen = _seen_app()
    stacked = RequestIdMiddleware(RequestIdMiddleware(app, generator=lambda: "inner"))
    async with _client(stacked) as client:
        response = await client.get("/echo", headers={"X-Request-ID": "outer-1"})
    assert response.headers.get_list("x-request-id") == ["outer-1"]
    assert seen[0]["var"] == "outer-1"


async def test_concurrent_requests_are_kept_apart() -> None:
    app, seen = _seen_app()
    async with _client(RequestIdMiddleware(app)) as client:
        ids = [f"req-{n}" for n in range(50)]
        responses = await asyncio.gather(
            *(client.get("/echo", headers={"X-Request-ID": rid}) for rid in ids)
        )
    assert [r.text for r in responses] == ids
    assert all(entry["var"] == entry["scope"] == entry["structlog"] for entry in seen)
    assert sorted(entry["var"] for entry in seen) == sorted(ids)


def test_default_validator_and_generator() -> None:
    assert is_valid_request_id(generate_request_id())
    assert len({generate_request_id() for _ in range(1000)}) == 1000
    assert not is_valid_request_id("a" * 129)


def test_header_on_the_wire_including_inner_500() -> None:
    app, _ = _seen_app()
    with run_uvicorn(RequestIdMiddleware(app), lifespan="off") as server:
        status, headers, body = http_get(f"{server.url}/echo", headers={"X-Request-ID": "wire-1"})
        assert (status, headers["x-request-id"], body) == (200, "wire-1", b"wire-1")
        status, headers, _ = http_get(f"{server.url}/boom", headers={"X-Request-ID": "wire-2"})
        assert (status, headers["x-request-id"]) == (500, "wire-2")
        # An invalid id sent over the wire is replaced, never echoed.
        status, headers, body = http_get(f"{server.url}/echo", headers={"X-Request-ID": "a b"})
        assert status == 200
        assert HEX32.fullmatch(headers["x-request-id"])


def _http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


def test_generated_ids_are_uuid4_and_differ_across_forked_workers() -> None:
    import os
    import uuid

    from asgi_observe.request_id import generate_request_id

    ids = {generate_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for value in list(ids)[:100]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked from a pre-loaded master (gunicorn --preload)
        os.write(write, generate_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child not in ids
    assert child != generate_request_id()
