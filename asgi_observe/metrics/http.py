"""`MetricsMiddleware`: the five HTTP metrics of the public contract.

| metric | type | labels |
| --- | --- | --- |
| ``http_requests_total`` | counter | ``method``, ``status``, ``handler`` |
| ``http_request_duration_seconds`` | histogram | ``method``, ``handler`` |
| ``http_request_size_bytes`` | histogram | ``handler`` |
| ``http_response_size_bytes`` | histogram | ``handler`` |
| ``http_requests_in_progress`` | gauge | ``method``, ``handler`` |

The names match prometheus-fastapi-instrumentator's; with ``instrumentator_compat`` the
status is grouped (``2xx``) and its ``http_requests_inprogress`` and
``http_request_duration_highr_seconds`` are exposed too, so its dashboards work unchanged.
Dynamic labels (`MetricsMiddleware(labels=...)`) go on the request counter, the latency
histogram and the in-progress gauge; constant labels on every family.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from time import perf_counter
from typing import cast

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from asgi_observe._asgi import relative_path
from asgi_observe.metrics._families import (
    ClientSeries,
    LabelValues,
    RecorderSeries,
    http_metrics_for,
)
from asgi_observe.metrics.app import check_label_names
from asgi_observe.metrics.websocket import WebSocketRecorder, websocket_metrics_for
from asgi_observe.routes import (
    LabelCap,
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

_Children = RecorderSeries | ClientSeries

LabelFunction = Callable[[Scope], "str | None"]
"""A dynamic label: its value for a request, from the scope (None or raising gives "")."""

BUILTIN_LABELS = frozenset({"method", "status", "handler", "le", "quantile"})
"""Names the HTTP families use themselves (or Prometheus reserves): refused as labels."""

DEFAULT_MAX_LABEL_VALUES = 100
"""Distinct values each dynamic label may take before new ones become ``other``."""


def _no_labels(scope: Scope) -> tuple[str, ...]:
    return ()


def _label_values(
    labels: Mapping[str, LabelFunction], max_values: int
) -> tuple[tuple[str, ...], LabelValues]:
    """The names of the dynamic labels and one function giving their bounded values."""
    names = check_label_names(tuple(labels), metric="http_requests_total")
    clashing = sorted(BUILTIN_LABELS.intersection(names))
    if clashing:
        msg = f"labels {clashing} clash with the built-in labels of the HTTP metrics"
        raise ValueError(msg)
    if not names:
        return (), _no_labels
    functions = tuple(labels[name] for name in names)
    for name, function in zip(names, functions, strict=True):
        if not callable(cast("object", function)):  # untyped callers (configuration files)
            msg = f"label {name!r}: expected a callable taking the ASGI scope, got {function!r}"
            raise TypeError(msg)
    caps = tuple(LabelCap(max_values, what=f"values of label {name!r}") for name in names)

    def values(scope: Scope) -> tuple[str, ...]:
        found = []
        for function, cap in zip(functions, caps, strict=True):
            try:
                value = function(scope)
            except Exception:  # a user's label must never break the request
                value = None
            found.append("" if value is None else cap.bound(str(value)))
        return tuple(found)

    return names, values


class MetricsMiddleware:
    """Record the HTTP metrics of every request and the websocket metrics of every
    connection (`asgi_observe.metrics.websocket`); lifespan scopes pass through untouched.

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
        exclude_methods: methods (``OPTIONS``, ``HEAD``) not measured at all.
        labels: dynamic labels, name → ``function(scope) -> str | None``, added to
            ``http_requests_total``, ``http_request_duration_seconds`` and
            ``http_requests_in_progress``. Each takes at most `max_label_values` distinct
            values, then ``other``; a function that raises or returns None gives ``""``
            and the request goes on. Names of the built-in labels, and names
            `asgi_observe.metrics.app.check_label_names` refuses (``user_id``,
            ``email``, ``path``...), are refused here.
        const_labels: constant labels on every HTTP family (``METRICS_LABELS``).
        max_label_values: the bound of each dynamic label.
        instrumentator_compat: prometheus-fastapi-instrumentator's layout as well:
            status grouped as ``2xx``, ``http_requests_inprogress``,
            ``http_request_duration_highr_seconds``.

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
        exclude_methods: Collection[str] = (),
        labels: Mapping[str, LabelFunction] | None = None,
        const_labels: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
        instrumentator_compat: bool = False,
    ) -> None:
        self.app = app
        dynamic, self._label_values = _label_values(labels or {}, max_label_values)
        constant = tuple(dict(const_labels or {}).items())
        const_names = check_label_names([name for name, _ in constant], metric="http_*")
        clashing = sorted(BUILTIN_LABELS.union(dynamic).intersection(const_names))
        if clashing:
            msg = f"const_labels {clashing} clash with the built-in or dynamic labels"
            raise ValueError(msg)
        self._metrics = http_metrics_for(
            REGISTRY if registry is None else registry,
            namespace,
            buckets,
            size_buckets,
            multiprocess=multiprocess,
            max_handlers=max_handlers,
            dynamic_labels=dynamic,
            const_labels=tuple((name, str(value)) for name, value in constant),
            instrumentator_compat=instrumentator_compat,
        )
        self._const = self._metrics.const_values
        self._exclude_methods = frozenset(method.upper() for method in exclude_methods)
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
                const_labels=self._metrics.const_labels,
            ),
            route_resolver,
        )
        self._children: dict[tuple[str, int, str, tuple[str, ...]], _Children] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            (self._exclude or self._exclude_methods) and self.excludes(scope, relative_path(scope))
        ):
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
                    self.record_request(scope, status, perf_counter() - start, received, sent)
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        counted = self.begin_request(scope)
        downstream: Send = send_recording_response
        if counted is not None:
            downstream = self._counting_in_progress(scope, send_recording_response, counted)
        try:
            await self.app(scope, receive_counting_bytes, downstream)
        finally:  # on an app exception: 500, or the status already sent
            self.end_request(scope, counted)
            if not recorded:
                self.record_request(scope, status or 500, perf_counter() - start, received, sent)

    def record_request(  # noqa: PLR0917 - what one finished request is
        self,
        scope: Scope,
        status: int,
        duration: float,
        received: int,
        sent: int,
        span_context: trace.SpanContext | None = None,
    ) -> None:
        """Record one finished request; never raises (a failure is logged).

        `span_context` is the request span's, when the caller holds it (`instrument()`'s
        one-layer path); by default the current span's is looked up.
        """
        try:
            self._record(scope, status, duration, received, sent, span_context)
        except Exception:
            logger.exception("asgi_observe: failed to record HTTP metrics")

    @property
    def excluded_paths(self) -> frozenset[str]:
        """The exact paths (below ``root_path``) not measured: half of `excludes`' rule."""
        return self._exclude

    @property
    def excluded_methods(self) -> frozenset[str]:
        """The methods (upper case) not measured: the other half of `excludes`' rule."""
        return self._exclude_methods

    def excludes(self, scope: Scope, path: str) -> bool:
        """Whether the HTTP request `scope`, at `path` below ``root_path``, is not measured."""
        return path in self._exclude or (
            bool(self._exclude_methods) and scope.get("method") in self._exclude_methods
        )

    def begin_request(self, scope: Scope) -> list[Gauge] | None:
        """Count `scope` in progress; returns the list `count_in_progress` fills in
        multiprocess mode (None otherwise). Pair every call with `end_request`.

        In-process the request is counted at once (`InFlight` groups requests by route at
        scrape time); a multiprocess livesum gauge needs the route, known only when the
        response starts, so there the request is counted then (`count_in_progress`).
        """
        in_flight = self._metrics.in_flight
        if in_flight is not None:
            in_flight.active[id(scope)] = (scope, self._label_values)
            return None
        return [] if self._metrics.in_progress_gauges else None

    def count_in_progress(self, scope: Scope, status: int | None, counted: list[Gauge]) -> None:
        """Multiprocess mode: count the request in progress once its route is known."""
        if counted:
            return
        template = resolve_route(scope, self._resolver, status=status)
        handler = unmatched_label(scope) if template is None else self._handlers.bound(template)
        values = (*self._label_values(scope), *self._const)
        method = normalize_method(scope.get("method"))
        for gauge in self._metrics.in_progress_gauges:
            child = gauge.labels(method, handler, *values)
            child.inc()
            counted.append(child)

    def end_request(self, scope: Scope, counted: list[Gauge] | None) -> None:
        """Undo `begin_request` (and `count_in_progress`) when the request ends."""
        in_flight = self._metrics.in_flight
        if in_flight is not None:
            in_flight.active.pop(id(scope), None)
        for child in counted or ():
            child.dec()

    def _counting_in_progress(self, scope: Scope, send: Send, counted: list[Gauge]) -> Send:
        """Multiprocess mode: `count_in_progress` as the response starts.

        A livesum gauge needs its labels when it is incremented, and the route is known
        only when the response starts; the gauge therefore covers the response phase.
        """

        async def send_counting_progress(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.count_in_progress(scope, message.get("status"), counted)
            await send(message)

        return send_counting_progress

    def _record(  # noqa: PLR0917 - record_request's arguments
        self,
        scope: Scope,
        status: int,
        duration: float,
        received: int,
        sent: int,
        span_context: trace.SpanContext | None,
    ) -> None:
        method = normalize_method(scope.get("method"))
        template = resolve_route(scope, self._resolver, status=status)
        handler = unmatched_label(scope) if template is None else self._handlers.bound(template)
        values = self._label_values(scope)
        children = self._children.get((method, status, handler, values))
        if children is None:
            children = self._make_children(method, status, handler, values)
        if span_context is None:
            span_context = trace.get_current_span().get_span_context()
        # Exemplars go where an operator jumps from a graph to a trace (request rate,
        # latency): the request counter and the latency bucket, never the size histograms.
        trace_id = (
            format(span_context.trace_id, "032x")
            if span_context.trace_flags & _SAMPLED and span_context.is_valid
            else None
        )
        children.record(duration, received, sent, trace_id)

    def _make_children(
        self, method: str, status: int, handler: str, values: tuple[str, ...]
    ) -> _Children:
        children = self._metrics.series(method, status, handler, values)
        # Bounded: methods are folded, handlers and label values capped, and statuses
        # are three digits.
        self._children[(method, status, handler, values)] = children
        return children
