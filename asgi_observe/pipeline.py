"""`instrument()`'s HTTP path: the stack's per-request work done in one ASGI layer.

The four middlewares (request id, tracing, metrics, access log) each wrap ``send`` and
``receive``, scan the headers, look up the current span, time the request and track
its status and size. Composed, that is four times the same bookkeeping, and behind a
real server every extra coroutine call and closure costs more than in a micro loop.
`RequestPipeline` keeps each middleware as the single owner of its concern -- it calls
their own methods to choose the request id, start the span, record the metrics and
write the access line -- and only shares the bookkeeping: one ``send`` wrapper, one
``receive`` wrapper, one clock, one span context handed to the metrics and the log.

A request whose span is sampled gets the tracing middleware's full path (attributes,
hooks, header capture, status) around this layer's metrics and access line. Requests it
does not take go through the composed middlewares unchanged, so the behaviour is theirs
by construction: every scope other than HTTP (websockets, lifespan), requests a
middleware excludes (the stack's own endpoints, probes, excluded paths and methods),
and requests that already carry a request id.
"""

from __future__ import annotations

from time import perf_counter

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanContext

from asgi_observe._asgi import relative_path
from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.metrics.http import MetricsMiddleware
from asgi_observe.request_id import (
    SCOPE_KEY,
    RequestIdMiddleware,
    bind_request_context,
    reset_request_context,
    with_request_id_header,
)
from asgi_observe.routes import track_route
from asgi_observe.tracing import TracingMiddleware
from asgi_observe.tracing.api import report_once
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestPipeline"]


class RequestPipeline:
    """The composed stack `composed`, with its common HTTP requests served in one layer.

    Args:
        composed: request id → tracing → metrics → access log → path dispatch → `app`,
            as built by `instrument()`; serves every request this layer does not take.
        app: the app the requests this layer takes are served by: the user's app, since
            the stack's own endpoints (`own_paths`, `own_prefix`) are left to `composed`.
        request_id: the request-id middleware of `composed`.
        tracing: its tracing middleware (None without tracing).
        metrics: its metrics middleware (None without metrics).
        access: its access-log middleware.
        own_paths: paths (below ``root_path``) served by the stack itself rather than
            the user's app (``/metrics``...), and `own_prefix` the prefix of the mounted
            health app: left to `composed`.

    Which requests the layer leaves to `composed` is decided per request by one set
    lookup: the own paths and the exact paths and methods each middleware says it
    excludes (their ``excluded_paths``, ``excluded_methods``), gathered once here.
    Behind a ``root_path`` each middleware's own ``excludes`` is asked instead (the
    access log strips the prefix by a rule of its own), and the tracing middleware's
    always when URL patterns exclude requests too.
    """

    def __init__(
        self,
        composed: ASGIApp,
        *,
        app: ASGIApp,
        request_id: RequestIdMiddleware,
        tracing: TracingMiddleware | None,
        metrics: MetricsMiddleware | None,
        access: AccessLogMiddleware,
        own_paths: frozenset[str] = frozenset(),
        own_prefix: str | None = None,
    ) -> None:
        self.composed = composed
        self.app = app
        self._request_id = request_id
        self._tracing = tracing
        self._metrics = metrics
        self._access = access
        self._own_paths = own_paths
        self._own_prefix = own_prefix
        # The whole test of `_takes` for a request outside any root_path, decided here
        # once: one set lookup (paths), one prefix test, one method lookup.
        skipped = own_paths | access.excluded_paths
        if metrics is not None:
            skipped |= metrics.excluded_paths
        if tracing is not None:
            skipped |= tracing.excluded_paths
        self._skipped = skipped
        self._skipped_prefix = None if own_prefix is None else own_prefix + "/"
        self._skipped_methods = frozenset() if metrics is None else metrics.excluded_methods
        self._tracing_patterns = tracing is not None and tracing.excludes_by_pattern

    def _takes(self, scope: Scope) -> bool:
        """Whether `scope` is an HTTP request no middleware treats specially."""
        if scope["type"] != "http" or SCOPE_KEY in scope:
            return False
        if scope.get("root_path"):
            return self._takes_asking(scope)
        path: str = scope["path"]
        if path in self._skipped:
            return False
        prefix = self._skipped_prefix
        if prefix is not None and (path.startswith(prefix) or path == self._own_prefix):
            return False
        methods = self._skipped_methods
        if methods and scope.get("method") in methods:
            return False
        tracing = self._tracing
        return not (self._tracing_patterns and tracing is not None and tracing.excludes(scope))

    def _takes_asking(self, scope: Scope) -> bool:
        """`_takes` for an HTTP request without a request id, by each middleware's rule."""
        path = relative_path(scope)
        if path in self._own_paths:
            return False
        prefix = self._own_prefix
        if prefix is not None and (path == prefix or path.startswith(prefix + "/")):
            return False
        if self._access.excludes(scope):
            return False
        if self._metrics is not None and self._metrics.excludes(scope, path):
            return False
        return self._tracing is None or not self._tracing.excludes(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            await self.composed(scope, receive, send)
            return
        request_id, header = self._request_id.assign(scope)
        wanted = header[0]
        tokens = bind_request_context(request_id)
        try:
            track_route(scope)
            span_token = None
            span_context = None
            tracing = self._tracing
            if tracing is not None:
                try:
                    span, span_token, name, host, agent = tracing.start_request_span(scope)
                except Exception:
                    report_once(
                        "start", "asgi_observe: starting the request span failed; not traced"
                    )
                else:
                    span_context = span.get_span_context()
                    if span.is_recording():
                        # Sampled: the tracing middleware's full path (attributes, hooks,
                        # header capture) around this layer's metrics and access line; the
                        # request id is added outside it, as in the composed stack.
                        async def send_with_request_id(message: Message) -> None:
                            if message["type"] == "http.response.start":
                                message = with_request_id_header(message, header, wanted)
                            await send(message)

                        async def observed(
                            inner_scope: Scope, inner_receive: Receive, inner_send: Send
                        ) -> None:
                            await self._observe(
                                inner_scope, inner_receive, inner_send, None, span_context
                            )

                        await tracing.run_sampled(
                            scope,
                            receive,
                            send_with_request_id,
                            span,
                            span_token,
                            name,
                            host,
                            agent,
                            app=observed,
                        )
                        return
            try:
                await self._observe(scope, receive, send, header, span_context)
            finally:
                if span_token is not None:
                    otel_context.detach(span_token)
        finally:
            reset_request_context(tokens)

    async def _observe(  # noqa: PLR0915 - one closure per wrapper is what saves the layers
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        header: tuple[bytes, bytes] | None,
        span_context: SpanContext | None,
    ) -> None:
        """Metrics and the access line of one request, around the app, with one wrapper
        each for ``send`` and ``receive``; the request-id `header` is added to the
        response unless None (then the caller adds it)."""
        metrics = self._metrics
        access = self._access
        status = 0
        received = 0
        sent = 0
        elapsed: float | None = None
        recorded = logged = False
        counted = metrics.begin_request(scope) if metrics is not None else None
        start = perf_counter()

        async def receive_counting_bytes() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        async def send_observed(message: Message) -> None:
            nonlocal status, sent, elapsed, recorded, logged
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    sent += len(body)
                if not message.get("more_body", False) and elapsed is None:
                    # Recorded and logged before the last byte leaves: a client that has
                    # read its response finds its request counted and its line written.
                    elapsed = perf_counter() - start
                    if metrics is not None:
                        recorded = True
                        metrics.record_request(scope, status, elapsed, received, sent, span_context)
                    if status < 500:  # a 5xx line waits for the app's exception, if any
                        logged = True
                        access.log_request(
                            scope, status, sent, elapsed, None, span_context=span_context
                        )
            elif kind == "http.response.start":
                status = message["status"]
                if counted is not None and metrics is not None:
                    metrics.count_in_progress(scope, status, counted)
                if header is not None:
                    message = with_request_id_header(message, header, header[0])
            elif kind == "http.response.pathsend" and elapsed is None:  # a file, sent whole
                elapsed = perf_counter() - start
                if status < 500:
                    logged = True
                    access.log_request(
                        scope, status, sent, elapsed, None, span_context=span_context
                    )
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive_counting_bytes, send_observed)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finished = perf_counter() - start
            if not logged:
                access.log_request(
                    scope,
                    status or 500,
                    sent,
                    finished if elapsed is None else elapsed,
                    error,
                    span_context=span_context,
                )
            if metrics is not None:
                metrics.end_request(scope, counted)
                if not recorded:
                    metrics.record_request(
                        scope, status or 500, finished, received, sent, span_context
                    )
