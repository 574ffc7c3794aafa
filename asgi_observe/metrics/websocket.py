"""The four websocket metric families and the recorder of one connection.

| metric | type | labels |
| --- | --- | --- |
| ``websocket_connections_total`` | counter | ``handler``, ``outcome`` (``accepted``, ``rejected``, ``error``) |
| ``websocket_connections_active`` | gauge | ``handler`` |
| ``websocket_connection_duration_seconds`` | histogram | ``handler`` |
| ``websocket_messages_total`` | counter | ``handler``, ``direction`` (``received``, ``sent``) |

`MetricsMiddleware` hands websocket scopes to `WebSocketRecorder`; HTTP requests never
reach this module. The ``handler`` label is the route template, resolved like HTTP's and
bounded by the same `asgi_observe.routes.LabelCap` as the HTTP families of the registry,
so HTTP routes and websocket routes together stay under one cap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from asgi_observe._websocket import (
    DIRECTION_RECEIVED,
    DIRECTION_SENT,
    WebSocketSession,
)
from asgi_observe.metrics._per_registry import PerRegistry
from asgi_observe.routes import (
    LabelCap,
    RouteResolver,
    resolve_route,
    track_route,
    unmatched_label,
)
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_CONNECTION_BUCKETS", "WebSocketMetrics", "WebSocketRecorder"]

logger = logging.getLogger("asgi_observe")

DEFAULT_CONNECTION_BUCKETS: tuple[float, ...] = (
    0.1,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
"""Connection lifetimes in seconds, from a tenth of a second to a day: websockets live
for minutes or hours, far past the HTTP latency buckets."""

# (active gauge, duration histogram, received counter, sent counter) of one handler.
_Children = tuple[Gauge, Histogram, Counter, Counter]


class WebSocketMetrics:
    """The websocket families of one (registry, namespace) pair, with cached children."""

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        handlers: LabelCap,
        *,
        multiprocess: bool,
        const_labels: tuple[tuple[str, str], ...] = (),
        buckets: Sequence[float] = DEFAULT_CONNECTION_BUCKETS,
    ) -> None:
        const_names = tuple(name for name, _ in const_labels)
        clashing = sorted({"handler", "outcome", "direction"}.intersection(const_names))
        if clashing:
            msg = f"const_labels {clashing} clash with the labels of the websocket metrics"
            raise ValueError(msg)
        self.handlers = handlers
        self.const_values = tuple(value for _, value in const_labels)
        self.connections = Counter(
            "websocket_connections_total",
            "Websocket connections by handler and outcome (accepted, rejected, error)",
            ("handler", "outcome", *const_names),
            namespace=namespace,
            registry=registry,
        )
        self.active = Gauge(
            "websocket_connections_active",
            "Websocket connections currently open (accepted and not yet ended)",
            ("handler", *const_names),
            namespace=namespace,
            registry=registry,
            # As http_requests_in_progress: worker files summed over live workers only.
            multiprocess_mode="livesum" if multiprocess else "all",
        )
        self.duration = Histogram(
            "websocket_connection_duration_seconds",
            "Websocket connection lifetime from accept to close or disconnect",
            ("handler", *const_names),
            namespace=namespace,
            buckets=buckets,
            registry=registry,
        )
        self.messages = Counter(
            "websocket_messages_total",
            "Websocket messages by handler and direction (received, sent)",
            ("handler", "direction", *const_names),
            namespace=namespace,
            registry=registry,
        )
        # Bounded: handlers are capped and outcomes are three constants.
        self._children: dict[str, _Children] = {}
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def children(self, handler: str) -> _Children:
        found = self._children.get(handler)
        if found is None:
            const = self.const_values
            found = (
                self.active.labels(handler, *const),
                self.duration.labels(handler, *const),
                self.messages.labels(handler, DIRECTION_RECEIVED, *const),
                self.messages.labels(handler, DIRECTION_SENT, *const),
            )
            self._children[handler] = found
        return found

    def connection(self, handler: str, outcome: str) -> Counter:
        key = (handler, outcome)
        found = self._outcomes.get(key)
        if found is None:
            found = self._outcomes[key] = self.connections.labels(
                handler, outcome, *self.const_values
            )
        return found


_families: PerRegistry[WebSocketMetrics] = PerRegistry()


def websocket_metrics_for(
    registry: CollectorRegistry,
    namespace: str,
    handlers: LabelCap,
    *,
    multiprocess: bool,
    const_labels: tuple[tuple[str, str], ...] = (),
) -> WebSocketMetrics:
    """Get or create the websocket families for `registry` and `namespace`.

    `handlers` is the cap of the HTTP families on the same registry and namespace (one
    per pair), so it is the same object for every middleware that gets here. As with the
    HTTP families, the first middleware built on a registry decides the multiprocess
    mode, and asking for other constant labels is refused.
    """
    return _families.get_or_create(
        registry,
        namespace,
        const_labels,
        lambda: WebSocketMetrics(
            registry, namespace, handlers, multiprocess=multiprocess, const_labels=const_labels
        ),
        lambda _: (
            f"websocket metrics for namespace {namespace!r} already exist in this registry "
            "with other constant labels; use another registry or namespace, or the same labels"
        ),
    )


class WebSocketRecorder:
    """Measure websocket connections for `MetricsMiddleware`.

    Per connection: ``websocket_connections_active`` goes up when the app sends
    ``websocket.accept`` and down when the connection ends (the app sends
    ``websocket.close``, receives ``websocket.disconnect``, or returns or raises);
    ``websocket_connection_duration_seconds`` observes that span of time, for accepted
    connections only; each ``websocket.receive`` the app reads and each ``websocket.send``
    it sends adds one to ``websocket_messages_total`` as it happens, so long-lived
    connections show their traffic while open; ``websocket_connections_total`` counts the
    connection with its outcome once the app has returned (``error`` when it raised,
    which is re-raised unchanged). Messages go through unchanged, in order, undelayed.
    """

    def __init__(self, families: WebSocketMetrics, resolver: RouteResolver | None = None) -> None:
        self._families = families
        self._resolver = resolver

    def _handler(self, scope: Scope) -> str:
        template = resolve_route(scope, self._resolver)
        return (
            unmatched_label(scope) if template is None else self._families.handlers.bound(template)
        )

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        track_route(scope)  # before the app runs: see `track_route`
        session = WebSocketSession()
        families = self._families
        # Filled at accept, when routing has happened: the handler's children.
        children: _Children | None = None
        open_gauge: Gauge | None = None  # set while the active gauge counts this connection

        def close_gauge() -> None:
            nonlocal open_gauge
            if open_gauge is not None:
                open_gauge.dec()
                open_gauge = None

        async def receive_counting() -> Message:
            message = await receive()
            kind = session.on_receive(message)
            if kind == "websocket.receive":
                if children is not None:
                    children[2].inc()
            elif kind == "websocket.disconnect":
                close_gauge()
            return message

        async def send_counting(message: Message) -> None:
            nonlocal children, open_gauge
            accepted = session.accepted
            kind = session.on_send(message)
            if kind == "websocket.send":
                if children is not None:
                    children[3].inc()
            elif kind == "websocket.accept" and not accepted and session.accepted:
                try:
                    children = families.children(self._handler(scope))
                    children[0].inc()
                    open_gauge = children[0]
                except Exception:
                    logger.exception("asgi_observe: failed to record websocket metrics")
            elif kind == "websocket.close":
                close_gauge()
            await send(message)

        try:
            await app(scope, receive_counting, send_counting)
        except Exception:  # a cancelled task is not the app failing
            session.error = True
            raise
        finally:
            session.end()
            close_gauge()
            self._record(scope, session, children)

    def _record(self, scope: Scope, session: WebSocketSession, children: _Children | None) -> None:
        """Count the finished connection by outcome; observe its duration if accepted."""
        try:
            handler = self._handler(scope)
            if session.accepted:
                if children is None:
                    children = self._families.children(handler)
                children[1].observe(session.duration())
            self._families.connection(handler, session.outcome).inc()
        except Exception:
            logger.exception("asgi_observe: failed to record websocket metrics")
