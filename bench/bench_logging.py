"""Request ids, access logs and redaction: what they add per request.

- `RequestIdMiddleware` against asgi-correlation-id's `CorrelationIdMiddleware`, both
  around the same bare Starlette app, with and without an incoming id.
- `AccessLogMiddleware` (JSON, PII-redacted, through `configure_logging`, written to
  /dev/null) against a minimal hand-written structlog access-log middleware that writes
  plain JSON to the same file. Target: at most +12 µs/request over the bare app, i.e. no
  more than the hand-written one. A second comparison puts `RequestIdMiddleware` in
  front, so every line carries a fresh request id, bound in the logging context too.
- `redact()` of a 200-character message without personal data, timed with `timeit`.
  Target: at most 3 µs.

Run with ``python -m bench bench_logging``.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from time import perf_counter
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import pii
from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.logs.config import configure_logging
from asgi_observe.pii import PIIRedactor, redact
from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.settings import Settings
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from bench.harness import Result, compare, make_scope, print_table

PLAIN_MESSAGE = (
    "Processed order batch for tenant acme-corp in region ap-southeast-1: 42 items "
    "shipped, 3 pending, cache hit ratio 0.93, latency 12.5 ms, worker w-7 finished the "
    "run and released the lease without errors"
)[:200]
OPERATIONAL_MESSAGE = (
    "request 550e8400-e29b-41d4-a716-446655440000 trace 4bf92f3577b34da6a3ce929d0e0e4736 "
    "at 2024-01-15T12:30:45.123456Z from 192.168.100.200 served by api v1.2.3 in 1234.5 ms "
    "for /items/42 with status 200 ok"
)[:200]


def _bare_app() -> ASGIApp:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items/{item_id}", item)])


class HandWrittenAccessLog:
    """What a user would write: time the request, log five fields with structlog."""

    def __init__(self, app: ASGIApp, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.logger.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((perf_counter() - start) * 1000, 3),
                client_ip=scope["client"][0] if scope.get("client") else None,
            )


class PassThrough:
    """The floor: a middleware that only wraps `send`, as every header-echoing one must."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


def _with_incoming_id() -> Scope:
    return make_scope(headers=[(b"x-request-id", b"3f1c2a9e8b7d4c6a9e0f1a2b3c4d5e6f")])


def _micro(statement: Any, number: int = 20000, repeat: int = 7) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e6


async def _raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def bench_request_id_raw() -> list[Result]:
    """Around a raw ASGI app the framework's own cost (and its noise) is out of the way."""
    return compare(
        {
            "raw ASGI app": _raw_app,
            "pass-through middleware (floor)": PassThrough(_raw_app),
            "asgi-correlation-id": CorrelationIdMiddleware(_raw_app),
            "RequestIdMiddleware": RequestIdMiddleware(_raw_app),
        },
        requests=4000,
        rounds=11,
    )


def bench_request_id() -> tuple[list[Result], list[Result]]:
    bare = _bare_app()
    apps: dict[str, ASGIApp] = {
        "bare Starlette": bare,
        "pass-through middleware (floor)": PassThrough(bare),
        "asgi-correlation-id": CorrelationIdMiddleware(bare),
        "RequestIdMiddleware": RequestIdMiddleware(bare),
    }
    generated = compare(apps)
    incoming = compare(
        {
            "bare Starlette": bare,
            "pass-through middleware (floor)": PassThrough(bare),
            # asgi-correlation-id validates UUID4 by default; a uuid4 hex passes it too
            "asgi-correlation-id": CorrelationIdMiddleware(bare, validator=None),
            "RequestIdMiddleware": RequestIdMiddleware(bare),
        },
        scope_factory=_with_incoming_id,
    )
    return generated, incoming


def bench_access_log() -> list[Result]:
    devnull = open(os.devnull, "w")  # noqa: SIM115 - kept open for the whole run
    configure_logging(Settings(environment="production"), stream=devnull)
    minimal_logger = structlog.wrap_logger(
        structlog.WriteLogger(devnull),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    configured_logger = structlog.get_logger("bench.access")
    bare = _bare_app()
    apps: dict[str, ASGIApp] = {
        "bare Starlette": bare,
        "hand-written, plain structlog JSON": HandWrittenAccessLog(bare, minimal_logger),
        "hand-written, configure_logging pipeline": HandWrittenAccessLog(bare, configured_logger),
        "AccessLogMiddleware": AccessLogMiddleware(bare),
    }
    return compare(apps, requests=1500)


def bench_access_log_with_request_id() -> list[Result]:
    """As deployed: a new request id per request, on the line and in the context."""
    bare = _bare_app()
    return compare(
        {
            "RequestIdMiddleware": RequestIdMiddleware(bare),
            "RequestIdMiddleware + AccessLogMiddleware": RequestIdMiddleware(
                AccessLogMiddleware(bare)
            ),
        },
        requests=1500,
    )


def bench_redact() -> dict[str, float]:
    redactor = PIIRedactor()
    event = {
        "event": "order shipped",
        "order_id": 1234,
        "tenant": "acme-corp",
        "items": ["a", "b"],
        "request_id": "3f1c2a9e8b7d4c6a9e0f1a2b3c4d5e6f",
        "duration_ms": 12.5,
    }
    cache = pii._cache  # memoises short strings only; these messages are 200 characters

    def uncached(text: str) -> Callable[[], object]:
        def run() -> object:
            cache.clear()  # measure the patterns, not the memo (clearing costs ~0.03 µs)
            return redact(text)

        return run

    assert len(PLAIN_MESSAGE) == 200
    return {
        "redact(200-char message, no PII), first sight": _micro(uncached(PLAIN_MESSAGE)),
        "redact(same message, memoised)": _micro(lambda: redact(PLAIN_MESSAGE)),
        "redact(200-char message with UUID, trace id, timestamp, IP), first sight": _micro(
            uncached(OPERATIONAL_MESSAGE)
        ),
        "PIIRedactor on a 6-key event dict": _micro(lambda: redactor(None, "info", dict(event))),
    }


def main() -> None:
    generated, incoming = bench_request_id()
    print_table("Request id, id generated (target: <= +4 µs)", generated, baseline="bare Starlette")
    print_table("Request id, valid incoming id", incoming, baseline="bare Starlette")
    print_table(
        "Request id around a raw ASGI app, id generated",
        bench_request_id_raw(),
        baseline="raw ASGI app",
    )
    access = bench_access_log()
    print_table(
        "Access log, JSON to /dev/null (target: AccessLogMiddleware <= +12 µs vs bare app)",
        access,
        baseline="bare Starlette",
    )
    by_name = {r.name: r.micros for r in access}
    print(
        "\nAccessLogMiddleware vs hand-written plain structlog JSON: "
        f"{by_name['AccessLogMiddleware'] - by_name['hand-written, plain structlog JSON']:+.1f} µs; "
        "vs hand-written on the same pipeline: "
        f"{by_name['AccessLogMiddleware'] - by_name['hand-written, configure_logging pipeline']:+.1f} µs"
    )
    print_table(
        "Access log behind RequestIdMiddleware (a fresh id per line)",
        bench_access_log_with_request_id(),
        baseline="RequestIdMiddleware",
    )
    print("\n### Redaction (timeit, best of 7; target: <= 3 µs for the plain message)\n")
    print("| case | µs |")
    print("| --- | ---: |")
    for name, micros in bench_redact().items():
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
