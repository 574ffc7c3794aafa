"""`MetricsMiddleware`: the five HTTP metrics of the public contract.

| metric | type | labels |
| --- | --- | --- |
| ``http_requests_total`` | counter | ``method``, ``status``, ``handler`` |
| ``http_request_duration_seconds`` | histogram | ``method``, ``handler`` |
| ``http_request_size_bytes`` | histogram | ``handler`` |
| ``http_response_size_bytes`` | histogram | ``handler`` |
| ``http_requests_in_progress`` | gauge | ``method``, ``handler`` |

The names match prometheus-fastapi-instrumentator's, so its dashboards work unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from time import perf_counter

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from asgi_observe._asgi import relative_path
from asgi_observe.metrics._families import http_metrics_for
from asgi_observe.metrics.websocket import WebSocketRecorder, websocket_metrics_for
from asgi_observe.routes import (
    RouteResolver,
    normalize_method,
    resolve_route,
    track_route,
    unmatched_label,
)
from asgi_observe.settings import DEFAULT_BUCKETS
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_SIZE_BUCKETS", "MetricsMiddleware"]

logger = logging.getLogger("asgi_observe")

DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)
"""Body size buckets in bytes, one per decade."""

_SAMPLED = trace.TraceFlags.SAMPLED

_Children = tuple[Counter, Histogram, Histogram, Histogram]


class MetricsMiddleware:
    """Record the HTTP metrics of every request; other scope types pass through untouched.

    Args:
        app: the ASGI app to measure.
        registry: where the families live (default: prometheus-client's global registry).
            Families are get-or-create per registry, so rebuilding a middleware stack never
            raises "Duplicated timeseries".
        namespace: prefix for every metric name (``myapp_http_requests_total``).
        buckets: latency histogram buckets in seconds.
        size_buckets: request/response size histogram buckets in bytes.
        exclude_paths: exact paths (below ``root_path``) not measured at all.
        route_resolver: a hook returning the route template for frameworks the built-in
            resolution does not know (Django, hand-written routers).
        max_handlers: bound on distinct ``handler`` values; later ones become ``other``
            (the first middleware built on a registry sets it).
        multiprocess: use a multiprocess-safe in-progress gauge (set by `instrument()` when
            ``PROMETHEUS_MULTIPROC_DIR`` is configured).

    Duration ends when the last body byte is handed to the server, so background tasks
    run after the response are not counted. Sizes are the body bytes actually received
    and sent. An exception from the app is counted with status 500 (or the status already
    sent) and re-raised unchanged. When a sampled OpenTelemetry span is current, the request
    counter and the latency histogram carry its ``trace_id`` as an exemplar (exposed in the
    OpenMetrics format).

    Requests no route matched share the ``handler`` value ``none``. CORS preflights
    answered before routing (``OPTIONS`` with ``Access-Control-Request-Method``) get the
    template of the route their path matches, else the separate value ``preflight``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        exclude_paths: Collection[str] = (),
        route_resolver: RouteResolver | None = None,
        max_handlers: int = 200,
        multiprocess: bool = False,
    ) -> None:
        self.app = app
        self._metrics = http_metrics_for(
            REGISTRY if registry is None else registry,
            namespace,
            buckets,
            size_buckets,
            multiprocess=multiprocess,
            max_handlers=max_handlers,
        )
        self._exclude = frozenset(exclude_paths)
        self._resolver = route_resolver
        # One cap per family set: every middleware on a registry shares the bound.
        self._handlers = self._metrics.handlers
        self._websocket = WebSocketRecorder(
            websocket_metrics_for(
                REGISTRY if registry is None else registry,
                namespace,
                self._handlers,  # HTTP and websocket routes share one bound
                multiprocess=multiprocess,
            ),
            route_resolver,
        )
        self._children: dict[tuple[str, int, str], _Children] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exclude and relative_path(scope) in self._exclude):
            if scope["type"] == "websocket" and not (
                self._exclude and relative_path(scope) in self._exclude
            ):
                await self._websocket(self.app, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        track_route(scope)
        start = perf_counter()
        status = 0
        received = 0
        sent = 0
        recorded = False

        async def receive_counting_bytes() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        async def send_recording_response(message: Message) -> None:
            nonlocal status, sent, recorded
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    sent += len(body)
                if not message.get("more_body", False) and not recorded:
                    # Record before the last byte leaves: a client that has read its
                    # response and then scrapes must find its request counted.
                    recorded = True
                    self._record_safely(scope, status, perf_counter() - start, received, sent)
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = self._metrics.in_flight
        gauge = self._metrics.in_progress_gauge
        key = id(scope)
        downstream: Send = send_recording_response
        counted: list[Gauge] = []
        if in_flight is not None:
            in_flight.active[key] = scope
        elif gauge is not None:
            downstream = self._counting_in_progress(scope, send_recording_response, gauge, counted)
        try:
            await self.app(scope, receive_counting_bytes, downstream)
        finally:  # on an app exception: 500, or the status already sent
            if in_flight is not None:
                in_flight.active.pop(key, None)
            for child in counted:
                child.dec()
            if not recorded:
                self._record_safely(scope, status or 500, perf_counter() - start, received, sent)

    def _record_safely(
        self, scope: Scope, status: int, duration: float, received: int, sent: int
    ) -> None:
        try:
            self._record(scope, status, duration, received, sent)
        except Exception:
            logger.exception("asgi_observe: failed to record HTTP metrics")

    def _counting_in_progress(
        self, scope: Scope, send: Send, gauge: Gauge, counted: list[Gauge]
    ) -> Send:
        """Multiprocess mode: count the request in progress once its route is known.

        A livesum gauge needs its labels when it is incremented, and the route is known
        only when the response starts; the gauge therefore covers the response phase.
        The caller decrements what `counted` holds when the app returns or raises.
        """

        async def send_counting_progress(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                template = resolve_route(scope, self._resolver, status=message.get("status"))
                handler = (
                    unmatched_label(scope) if template is None else self._handlers.bound(template)
                )
                child = gauge.labels(normalize_method(scope.get("method")), handler)
                child.inc()
                counted.append(child)
            await send(message)

        return send_counting_progress

    def _record(self, scope: Scope, status: int, duration: float, received: int, sent: int) -> None:
        method = normalize_method(scope.get("method"))
        template = resolve_route(scope, self._resolver, status=status)
        handler = unmatched_label(scope) if template is None else self._handlers.bound(template)
        children = self._children.get((method, status, handler))
        if children is None:
            children = self._make_children(method, status, handler)
        requests, duration_h, request_h, response_h = children
        span_context = trace.get_current_span().get_span_context()
        if span_context.trace_flags & _SAMPLED and span_context.is_valid:
            exemplar = {"trace_id": format(span_context.trace_id, "032x")}
            # Exemplars go where an operator jumps from a graph to a trace (request rate,
            # latency); each one costs a validation, so the size histograms carry none.
            requests.inc(1, exemplar)
            duration_h.observe(duration, exemplar)
        else:
            requests.inc()
            duration_h.observe(duration)
        request_h.observe(received)
        response_h.observe(sent)

    def _make_children(self, method: str, status: int, handler: str) -> _Children:
        metrics = self._metrics
        children = (
            metrics.requests.labels(method, str(status), handler),
            metrics.duration.labels(method, handler),
            metrics.request_size.labels(handler),
            metrics.response_size.labels(handler),
        )
        # Bounded: methods are folded, handlers capped, and statuses are three digits.
        self._children[(method, status, handler)] = children
        return children
