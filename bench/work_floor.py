"""The work floor: what `instrument()`'s per-request work costs with none of its care.

`WorkFloor` is one hand-written ASGI layer that does the essential work the full stack
does for an HTTP request, in the cheapest way CPython offers, and nothing else:

- a request id (hex, from a pool of ``os.urandom`` bytes), bound in a context variable
  and sent back in ``x-request-id``;
- a span context made current for the request: a `NonRecordingSpan` with random ids,
  or, for the sampled share (decided on the trace id as ``TraceIdRatioBased`` does), an
  SDK span with the attributes our request spans carry, ended into a batch processor;
- a counter and a latency histogram per (method, route, status), under one lock;
- one JSON line (orjson) with the access log's fields and a timestamp, written to a
  buffered stream.

It is not a usable middleware: it redacts nothing, validates no header, survives no
failure, ignores websockets, multiprocess mode, exemplars, exclusions and every option.
It answers one question for the benchmarks: how much of a server's throughput the work
itself takes, before any design choice of a library. `bench_floor` (in-process) and
`bench_http` (``work_floor_10``, ``work_floor_100``) put it next to `instrument()`.
"""

from __future__ import annotations

import bisect
import contextvars
import os
import random
import threading
import time
from typing import IO

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from asgi_observe.routes import resolve_route, track_route
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["WorkFloor"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ID_BYTES = 16
_POOL_IDS = 256
_TRACE_ID_LOW_BITS = (1 << 64) - 1
_RANDOM_TRACE_ID = TraceFlags(0x02)  # W3C level 2: the trace id is random
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "work_floor_request_id", default=None
)


class WorkFloor:
    """The essential per-request work of the full stack around `app` (see the module).

    Args:
        app: the ASGI app.
        tracer: the SDK tracer for the sampled share; its provider's sampler should
            keep every span (``ALWAYS_ON``): the ratio is applied here, once.
        ratio: the sampled share of requests, 0.0 to 1.0.
        stream: where the JSON lines go (a buffered text stream).
    """

    def __init__(
        self, app: ASGIApp, *, tracer: trace.Tracer, ratio: float, stream: IO[str]
    ) -> None:
        self.app = app
        self._tracer = tracer
        self._bound = round(ratio * (_TRACE_ID_LOW_BITS + 1))
        self._stream = stream
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str | None, int], int] = {}
        self.histograms: dict[tuple[str, str | None, int], list[float]] = {}
        self._pool = b""
        self._second = -1
        self._stamp = ""

    def _new_request_id(self) -> str:
        if not self._pool:
            self._pool = os.urandom(_ID_BYTES * _POOL_IDS)
        chunk, self._pool = self._pool[:_ID_BYTES], self._pool[_ID_BYTES:]
        return chunk.hex()

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".%06dZ"
        return self._stamp % int((now - second) * 1_000_000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._new_request_id()
        id_token = _request_id.set(request_id)
        track_route(scope)
        trace_id = random.getrandbits(128) or 1
        span: trace.Span
        if trace_id & _TRACE_ID_LOW_BITS < self._bound:
            span = self._tracer.start_span(scope["method"], kind=SpanKind.SERVER)
        else:
            span = NonRecordingSpan(
                SpanContext(trace_id, random.getrandbits(64) or 1, False, _RANDOM_TRACE_ID)
            )
        span_token = otel_context.attach(trace.set_span_in_context(span))
        header = (b"x-request-id", request_id.encode("ascii"))
        status = 0
        sent = 0
        start = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - start
            self._finish(scope, span, request_id, status or 500, sent, elapsed)
            otel_context.detach(span_token)
            _request_id.reset(id_token)

    def _finish(  # noqa: PLR0917 - what one finished request is
        self,
        scope: Scope,
        span: trace.Span,
        request_id: str,
        status: int,
        sent: int,
        elapsed: float,
    ) -> None:
        method = scope["method"]
        route = resolve_route(scope, status=status)
        key = (method, route, status)
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            histogram = self.histograms.get(key)
            if histogram is None:
                histogram = self.histograms[key] = [0.0] * (len(_BUCKETS) + 2)
            histogram[bisect.bisect_left(_BUCKETS, elapsed)] += 1
            histogram[-1] += elapsed
        client = scope.get("client")
        client_ip = client[0] if client else None
        user_agent = None
        for name, value in scope.get("headers") or ():
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        context = span.get_span_context()
        if span.is_recording():
            span.set_attributes(
                {
                    "http.request.method": method,
                    "url.scheme": scope.get("scheme", "http"),
                    "url.path": scope["path"],
                    "server.address": "127.0.0.1",
                    "server.port": 8000,
                    "client.address": client_ip or "",
                    "user_agent.original": user_agent or "",
                    "request_id": request_id,
                    "http.route": route or "",
                    "http.response.status_code": status,
                }
            )
            span.update_name(f"{method} {route}")
            span.end()
        path = scope["path"]
        query = scope.get("query_string")
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        line = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000.0, 3),
            "client_ip": client_ip,
            "user_agent": user_agent,
            "response_size": sent,
            "request_id": request_id,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "event": "request",
            "logger": "asgi_observe.access",
            "level": "error" if status >= 500 else "warning" if status >= 400 else "info",
            "timestamp": self._timestamp(),
        }
        self._stream.write(orjson.dumps(line).decode() + "\n")
