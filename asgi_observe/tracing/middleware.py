"""`TracingMiddleware`: one OpenTelemetry SERVER span per HTTP request (and per websocket
connection), cheaply.

The per-request work is kept to what the span needs: one pass over the headers notes
whether a propagation field is present and picks out ``host`` and ``user-agent``;
context is extracted (with opentelemetry-instrumentation-asgi's ``asgi_getter``, the
ASGI carrier getter) only when a propagation header is present; attributes are built
only for sampled (recording) spans; no child spans are made for
``http.request``/``http.response.*`` messages. The route template is resolved once the
response has started and renames the span to ``{METHOD} {template}``, so span names stay
low-cardinality.

opentelemetry-instrumentation-asgi's ``OpenTelemetryMiddleware`` itself is not wrapped
(it costs several times more per request, see ``bench/bench_tracing.py``), but its
conventions are followed through its public helpers and opentelemetry-util-http's:
header capture (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_*``, with the
sanitize list, then our own redaction), excluded-URL patterns (util-http's
``ExcludeList``, searched in the full URL), and hooks with the contrib names and
signatures (``server_request_hook``, ``client_request_hook``, ``client_response_hook``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from contextvars import Token
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import asgi_getter, collect_custom_headers_attributes
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util import types
from opentelemetry.util.http import (
    ExcludeList,
    SanitizeValue,
    normalise_request_header_name,
    normalise_response_header_name,
)

from asgi_observe._asgi import relative_path
from asgi_observe._websocket import WebSocketSession
from asgi_observe.net import IPNetwork, client_ip, parse_networks
from asgi_observe.routes import KNOWN_METHODS, RouteResolver, resolve_route, track_route
from asgi_observe.tracing.api import (
    APP_TRACER_NAME,
    INSTRUMENTATION_NAME,
    TRACER_CONTEXT_KEY,
    record_exception_on,
    redact_query,
    redact_text,
    report_once,
)
from asgi_observe.tracing.starter import SpanStarter
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_SCOPE_KEY",
    "WEBSOCKET_CLOSE_CODE",
    "WEBSOCKET_SPAN_NAME",
    "ClientHook",
    "ServerRequestHook",
    "TracingMiddleware",
]

REQUEST_ID_SCOPE_KEY = "asgi_observe.request_id"
"""Where `RequestIdMiddleware` leaves the request id; recorded as the ``request_id`` attribute."""

WEBSOCKET_SPAN_NAME = "WebSocket"
"""The name of a websocket connection's span when no route template is known."""

WEBSOCKET_CLOSE_CODE = "websocket.close.code"
"""The span attribute holding a websocket connection's close code. OpenTelemetry's
semantic conventions define no websocket attributes yet, hence a name of our own, in the
``websocket.*`` namespace their open proposal discusses."""

_SERVER = SpanKind.SERVER
_TEXT_CACHE_SIZE = 4096
# Longer values are redacted each time, not kept: an entry count alone bounds nothing
# when every request brings a new 8 KB path, host or user agent. 4096 entries of at most
# 256 characters (key and value) keep each memo under a few megabytes.
_MEMO_MAX_TEXT = 256
_PLAIN_ID = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ERROR = StatusCode.ERROR
_INVALID_SPAN = trace.INVALID_SPAN


ServerRequestHook = Callable[[trace.Span, Scope], None]
"""``server_request_hook(span, scope)``: called once the request span has started."""

ClientHook = Callable[[trace.Span, Scope, Message], None]
"""``client_request_hook(span, scope, message)`` for each message the app receives, and
``client_response_hook(span, scope, message)`` for each message it sends."""


def _exclude_list(excluded_urls: Iterable[str] | str | None) -> ExcludeList | None:
    """util-http's `ExcludeList` of the patterns, or None when there are none."""
    if excluded_urls is None:
        return None
    if isinstance(excluded_urls, str):
        excluded_urls = excluded_urls.split(",")
    patterns = [item.strip() for item in excluded_urls if item and item.strip()]
    if not patterns:
        return None
    try:
        re.compile("|".join(patterns))
    except re.error as exc:
        msg = f"excluded_urls: {patterns!r} contains an invalid regular expression ({exc})"
        raise ValueError(msg) from None
    return ExcludeList(patterns)


def _checked_regexes(name: str, patterns: Iterable[str]) -> list[str]:
    found = [pattern.strip() for pattern in patterns if pattern and pattern.strip()]
    for pattern in found:
        try:
            re.compile(pattern)
        except re.error as exc:
            msg = f"{name}: {pattern!r} is not a regular expression ({exc})"
            raise ValueError(msg) from None
    return found


def _warn_on_a_second_server_span(ours: trace.Span) -> None:
    """Report once when the app runs under another instrumentation's SERVER span.

    FastAPI 0.142 and later trace requests natively: its span, parented on the request
    headers alone, is current while the app sends, so each request would be recorded
    twice, in two traces. FastAPI's public switch is its constructor's ``telemetry``
    option; the library does not flip it behind the app's back.
    """
    current = trace.get_current_span()
    if current is ours or getattr(current, "kind", None) is not _SERVER:
        return
    report_once(
        "second-server-span",
        "asgi_observe: another instrumentation opened its own SERVER span inside the "
        "request span of TracingMiddleware, so each request is traced twice. For "
        "FastAPI's native telemetry, build the app with "
        "FastAPI(telemetry={'tracing': False, 'metrics': False}) (see docs/tracing.md); "
        "otherwise remove the other ASGI instrumentation",
        exc_info=False,
    )


def _port(text: str) -> int | None:
    """A TCP port of 1-5 ASCII digits in 1-65535, else None.

    ``str.isdigit`` alone would accept ``١٢٣`` (Arabic-Indic digits, which ``int`` reads
    as 123) and ``²``; a port past 65535 (or past int64, which OTLP cannot encode) would
    be an invalid ``server.port``. Such ports are dropped, the address kept.
    """
    if 0 < len(text) <= 5 and text.isascii() and text.isdigit():
        port = int(text)
        if 0 < port <= 65535:  # port 0 is reserved: no server listens on it
            return port
    return None


def _split_host(host: str) -> tuple[str, int | None]:
    """``example.com:8080`` / ``[::1]:8000`` / ``example.com`` → (address, port).

    The ``Host`` header is untrusted: a port that is not a valid TCP port (``host:99999``,
    ``host:-1``, ``host:12a``, ``host:١٢٣``) is dropped and the address kept, so the span
    keeps its other attributes and the exporter never sees an invalid value.
    """
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1 :]
            port = _port(rest[1:]) if rest.startswith(":") else None
            return host[1:end], port
    name, sep, port_text = host.rpartition(":")
    if sep and ":" not in name:
        return name, _port(port_text)
    return host, None


class TracingMiddleware:
    """One SERVER span per HTTP request and per websocket connection (see
    `_trace_websocket`); lifespan scopes pass through.

    The span is named ``{METHOD} {route template}`` (``{METHOD}`` when no route matched;
    ``HTTP`` for a method outside RFC 9110's set) and carries the stable HTTP semantic
    convention attributes: ``http.request.method``, ``url.path``, ``url.query``,
    ``url.scheme``, ``http.route``, ``http.response.status_code``, ``server.address``,
    ``server.port``, ``client.address``, ``user_agent.original``, ``error.type`` (5xx
    and exceptions), and ``request_id`` from ``scope[request_id_scope_key]``. Every
    string taken from the request passes through `asgi_observe.pii.redact` first;
    ``url.query`` through `asgi_observe.pii.redact_query`, as the access log's path. 5xx
    responses and exceptions set status ERROR; an exception also adds a redacted
    ``exception`` event and is re-raised unchanged. The span is the current one while
    the app runs, so log lines carry its ``trace_id`` and ``span_id``.

    Args:
        app: the ASGI app to wrap.
        tracer_provider: provider of the spans; None uses the global provider, looked up
            lazily so `setup_tracing` may run after the middleware is built.
        excluded_urls: regular expressions (an iterable, or one comma-separated string as
            in ``OTEL_PYTHON_EXCLUDED_URLS``) searched in the request path, and in the
            URL ``scheme://host/path`` for patterns containing ``://``; matching requests
            get no span. None excludes nothing.
        request_id_scope_key: scope key holding the request id.
        traceresponse: add a W3C ``traceresponse`` header to responses.
        route_resolver: a hook returning the route template, tried first.
        propagator: context propagator; None uses the global one (W3C trace context and
            baggage by default), looked up per request.
        trusted_proxies: networks whose ``X-Forwarded-For`` is believed for
            ``client.address`` (the rule of `asgi_observe.net`).
        excluded_paths: exact paths (below ``root_path``) that get no span; the
            defaults of `instrument()` (``/metrics``, ``/health``, ...) are given here, so
            ``/healthcare`` is still traced.
        http_capture_headers_server_request: request header names (regular
            expressions, case-insensitive) recorded as ``http.request.header.<name>``;
            ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST``.
        http_capture_headers_server_response: the same for response headers
            (``http.response.header.<name>``).
        http_capture_headers_sanitize_fields: header names (regular expressions) whose
            captured values are ``[REDACTED]``; every other captured value still passes
            `asgi_observe.pii.redact`.
        server_request_hook: ``hook(span, scope)`` once the span has started (recording
            spans only), e.g. to add attributes from the scope.
        client_request_hook: ``hook(span, scope, message)`` for each ``receive`` message.
        client_response_hook: ``hook(span, scope, message)`` for each ``send`` message.

    A hook that raises is reported once on the ``asgi_observe`` logger and never
    affects the request. The hooks and header capture run for recording spans only.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        excluded_urls: Iterable[str] | str | None = None,
        request_id_scope_key: str = REQUEST_ID_SCOPE_KEY,
        traceresponse: bool = False,
        route_resolver: RouteResolver | None = None,
        propagator: TextMapPropagator | None = None,
        trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
        excluded_paths: Iterable[str] = (),
        http_capture_headers_server_request: Iterable[str] = (),
        http_capture_headers_server_response: Iterable[str] = (),
        http_capture_headers_sanitize_fields: Iterable[str] = (),
        server_request_hook: ServerRequestHook | None = None,
        client_request_hook: ClientHook | None = None,
        client_response_hook: ClientHook | None = None,
    ) -> None:
        self.app = app
        self._excluded_paths = frozenset(excluded_paths)
        self._capture_request = _checked_regexes(
            "http_capture_headers_server_request", http_capture_headers_server_request
        )
        self._capture_response = _checked_regexes(
            "http_capture_headers_server_response", http_capture_headers_server_response
        )
        self._sanitize = SanitizeValue(
            _checked_regexes(
                "http_capture_headers_sanitize_fields", http_capture_headers_sanitize_fields
            )
        )
        self._server_request_hook = server_request_hook
        self._client_request_hook = client_request_hook
        self._client_response_hook = client_response_hook
        self._trusted_proxies = parse_networks(
            trusted_proxies, name="trusted_proxies (TRUSTED_PROXIES)"
        )
        if tracer_provider is None:
            self._tracer = trace.get_tracer(INSTRUMENTATION_NAME)
            self._app_tracer = trace.get_tracer(APP_TRACER_NAME)
            # Set once a global provider is seen to be installed (see _start).
            self._starter: SpanStarter | None = None
        else:
            self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
            self._app_tracer = tracer_provider.get_tracer(APP_TRACER_NAME)
            self._starter = SpanStarter(self._tracer)
        # `tracer` already falls back to the global provider; an injected one is made
        # visible to it through the request's context.
        self._publish_tracer = tracer_provider is not None
        # (a context, the same with the app tracer published in it): requests without a
        # propagated parent start from the same current context, mostly the empty one,
        # and contexts are immutable, so the derived one is reused.
        self._published: tuple[otel_context.Context, otel_context.Context] | None = None
        self._excluded = _exclude_list(excluded_urls)
        self._request_id_key = request_id_scope_key
        self._traceresponse = traceresponse
        self._resolver = route_resolver
        self._propagator = propagator
        # (propagator, its header names as ASGI bytes); replaced when the global
        # propagator changes, read as one tuple so concurrent requests see a pair.
        self._fields: tuple[TextMapPropagator | None, frozenset[bytes]] = (None, frozenset())
        # Memoised redactions (see _redacted); caches, not per-request state.
        self._texts: dict[bytes | str, str] = {}
        self._queries: dict[bytes, str] = {}
        self._hosts: dict[bytes, tuple[str, int | None]] = {}
        self._clients: dict[str, str | None] = {}

    def _propagation_fields(self, propagator: TextMapPropagator) -> frozenset[bytes]:
        fields = frozenset(name.lower().encode("latin-1") for name in propagator.fields)
        self._fields = (propagator, fields)
        return fields

    @property
    def excluded_paths(self) -> frozenset[str]:
        """The exact paths (below ``root_path``) that get no span."""
        return self._excluded_paths

    @property
    def excludes_by_pattern(self) -> bool:
        """Whether URL patterns (``excluded_urls``) exclude requests too: then only
        `excludes` tells, as the patterns are searched in the whole URL."""
        return self._excluded is not None

    def excludes(self, scope: Scope) -> bool:
        """Whether the request `scope` gets no span (excluded paths and URL patterns)."""
        return (self._excluded is not None or bool(self._excluded_paths)) and self._is_excluded(
            scope
        )

    def _is_excluded(self, scope: Scope) -> bool:
        if self._excluded_paths and relative_path(scope) in self._excluded_paths:
            return True
        excluded = self._excluded
        if excluded is None:
            return False
        # util-http's semantics (as the contrib ASGI middleware): patterns are searched
        # in the full URL, scheme://host/path.
        host = next((v for k, v in scope.get("headers") or () if k == b"host"), b"")
        if not host and scope.get("server"):
            server = scope["server"]
            host = f"{server[0]}:{server[1]}".encode("latin-1")
        path = scope.get("root_path", "") + relative_path(scope)
        url = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}{path}"
        return excluded.url_disabled(url)

    def _start(
        self, scope: Scope, *, name: str | None = None
    ) -> tuple[trace.Span, Token[otel_context.Context], str, bytes | None, bytes | None]:
        """Start the span as the current one: (span, context token, name, host, user agent).

        `name` is the initial span name; by default the request's method.
        """
        propagator = self._propagator or propagate.get_global_textmap()
        cached, fields = self._fields
        if cached is not propagator:
            fields = self._propagation_fields(propagator)
        propagated = False
        host = agent = None
        for key, value in scope.get("headers") or ():
            if key in fields:
                propagated = True
            elif key == b"host":
                host = value
            elif key == b"user-agent":
                agent = value
        # The scope is the carrier, read by the contrib's ASGI getter; skipped (the most
        # common case) when no propagation header came.
        parent = (
            propagator.extract(cast("dict[str, Any]", scope), getter=asgi_getter)
            if propagated
            else None
        )
        if name is None:
            method = scope.get("method", "GET")
            name = method if method in KNOWN_METHODS else "HTTP"
        current = otel_context.get_current() if parent is None else parent
        starter = self._starter
        if starter is None:
            span = self._tracer.start_span(name, parent, _SERVER)
            if span is not _INVALID_SPAN:  # the no-op tracer's answer without a parent
                made = span.get_span_context()
                if made.is_valid and not made.is_remote:
                    self._starter = self._global_starter()
        else:
            span = starter.start(name, parent, current=current)
        if self._publish_tracer:
            published = self._published  # `_with_app_tracer`'s memo, read without a call
            if parent is not None:
                current = otel_context.set_value(TRACER_CONTEXT_KEY, self._app_tracer, current)
            elif published is not None and published[0] is current:
                current = published[1]
            else:
                current = self._with_app_tracer(current)
        token = otel_context.attach(trace.set_span_in_context(span, current))
        return span, token, name, host, agent

    @staticmethod
    def _global_starter() -> SpanStarter | None:
        """The span starter of the global provider's tracer, once one is installed.

        Until then the API's proxy tracer starts the spans (the no-op tracer's carry no
        new, local, span context). OpenTelemetry installs a global provider once per
        process, and the proxy tracer keeps the tracer it resolved for good, as this
        starter does: the same tracer, asked for with the same name.
        """
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return None
        return SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME))

    def _with_app_tracer(self, context: otel_context.Context) -> otel_context.Context:
        """`context` with the app tracer published under `TRACER_CONTEXT_KEY`, memoised
        for the last context seen."""
        published = self._published
        if published is not None and published[0] is context:
            return published[1]
        derived = otel_context.set_value(TRACER_CONTEXT_KEY, self._app_tracer, context)
        self._published = (context, derived)
        return derived

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._trace_websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if (self._excluded is not None or self._excluded_paths) and self._is_excluded(scope):
            await self.app(scope, receive, send)
            return
        track_route(scope)  # before the app runs: see `track_route`
        try:
            span, token, name, host, agent = self._start(scope)
        except Exception:
            report_once("start", "asgi_observe: starting the request span failed; not traced")
            await self.app(scope, receive, send)
            return

        if not span.is_recording():  # not sampled: no attributes, no status, nothing to end
            try:
                if self._traceresponse and span.get_span_context().is_valid:
                    await self.app(scope, receive, self._with_traceresponse(span, send))
                else:
                    await self.app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return

        await self._run_recorded(scope, receive, send, span, token, name, host, agent)

    async def _run_recorded(  # noqa: PLR0917 - the pieces _start returned
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        span: trace.Span,
        token: Token[otel_context.Context],
        name: str,
        host: bytes | None,
        agent: bytes | None,
        *,
        app: ASGIApp | None = None,
    ) -> None:
        """The app (`app`, by default the wrapped one) under a sampled span: attributes,
        hooks, status, exception, end."""
        inner = self.app if app is None else app
        attributes = self._opened(span, scope, name, host, agent, websocket=False)
        status = 0
        trace_header = self._traceresponse_value(span) if self._traceresponse else None
        capture_response = self._capture_response
        response_hook = self._client_response_hook

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message.get("status", 0)
                _warn_on_a_second_server_span(span)
                if trace_header is not None:
                    message["headers"] = [*message.get("headers", ()), trace_header]
                if capture_response:
                    attributes.update(
                        self._captured(message, capture_response, normalise_response_header_name)
                    )
            if response_hook is not None:
                self._call_hook("client_response_hook", response_hook, span, scope, message)
            await send(message)

        error: Exception | None = None
        try:
            await inner(scope, self._receive_for(span, scope, receive), send_recording_status)
        except Exception as exc:
            error = exc
            raise
        finally:
            try:
                self._finish(
                    span, scope, name=name, attributes=attributes, status=status, error=error
                )
            except Exception:
                report_once("finish", "asgi_observe: completing the request span failed")
            finally:
                span.end()
                otel_context.detach(token)

    # For `instrument()`'s one-layer path (asgi_observe.pipeline): the same steps, by name.
    start_request_span = _start
    run_sampled = _run_recorded

    async def _trace_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One SERVER span per websocket connection, from the handshake to its end.

        Never a span per message: the messages are counted by the metrics and the access
        log. The span is named by the route template alone (``/ws/{room}``, as
        opentelemetry-instrumentation-fastapi names websocket spans), `WEBSOCKET_SPAN_NAME`
        when no route matched, and carries the request attributes of an HTTP span (no
        ``http.request.method``: the scope has none), ``http.route``,
        ``websocket.close.code`` (the app's ``websocket.close`` code, else the client's
        ``websocket.disconnect`` code) and, for an HTTP denial response,
        ``http.response.status_code``. An exception from the app sets status ERROR, adds
        the redacted ``exception`` event and is re-raised unchanged. Messages pass
        through untouched (no ``traceresponse`` header is added to ``websocket.accept``).
        """
        if (self._excluded is not None or self._excluded_paths) and self._is_excluded(scope):
            await self.app(scope, receive, send)
            return
        track_route(scope)  # before the app runs: see `track_route`
        try:
            span, token, name, host, agent = self._start(scope, name=WEBSOCKET_SPAN_NAME)
        except Exception:
            report_once("start", "asgi_observe: starting the request span failed; not traced")
            await self.app(scope, receive, send)
            return
        if not span.is_recording():
            try:
                await self.app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        await self._run_websocket_recorded(scope, receive, send, span, token, name, host, agent)

    async def _run_websocket_recorded(  # noqa: PLR0917 - the pieces _start returned
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        span: trace.Span,
        token: Token[otel_context.Context],
        name: str,
        host: bytes | None,
        agent: bytes | None,
    ) -> None:
        """The connection under a sampled span: attributes, hooks, close code, end."""
        attributes = self._opened(span, scope, name, host, agent, websocket=True)
        session = WebSocketSession()
        request_hook = self._client_request_hook
        response_hook = self._client_response_hook
        capture_response = self._capture_response

        async def receive_observed() -> Message:
            message = await receive()
            session.on_receive(message)
            if request_hook is not None:
                self._call_hook("client_request_hook", request_hook, span, scope, message)
            return message

        async def send_observed(message: Message) -> None:
            if session.on_send(message) == "websocket.accept":
                _warn_on_a_second_server_span(span)
                if capture_response:
                    attributes.update(
                        self._captured(message, capture_response, normalise_response_header_name)
                    )
            if response_hook is not None:
                self._call_hook("client_response_hook", response_hook, span, scope, message)
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive_observed, send_observed)
        except Exception as exc:
            error = exc
            raise
        finally:
            try:
                self._finish_websocket(span, scope, attributes, session, error)
            except Exception:
                report_once("finish", "asgi_observe: completing the request span failed")
            finally:
                span.end()
                otel_context.detach(token)

    def _finish_websocket(
        self,
        span: trace.Span,
        scope: Scope,
        attributes: dict[str, types.AttributeValue],
        session: WebSocketSession,
        error: Exception | None,
    ) -> None:
        route = resolve_route(scope, self._resolver)
        if route:
            span.update_name(route)
            attributes["http.route"] = route
        if session.close_code is not None:
            attributes[WEBSOCKET_CLOSE_CODE] = session.close_code
        status = session.denial_status
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            record_exception_on(span, error, escaped=True)
        elif status is not None and status >= 500:
            attributes["error.type"] = str(status)
            span.set_status(Status(_ERROR))
        span.set_attributes(attributes)

    def _opened(
        self,
        span: trace.Span,
        scope: Scope,
        name: str,
        host: bytes | None,
        agent: bytes | None,
        *,
        websocket: bool,
    ) -> dict[str, types.AttributeValue]:
        """A sampled span's request attributes, then the user's ``server_request_hook``.

        Built when the request starts (the app may rewrite the scope) but set once, with
        the response's, at the end: one validation pass in the SDK instead of two.
        """
        try:
            attributes = self._request_attributes(scope, name, host, agent)
            if websocket:
                del attributes["http.request.method"]  # a websocket scope has no method
        except Exception:
            report_once("attributes", "asgi_observe: building span attributes failed")
            attributes = {}
        if self._server_request_hook is not None:
            self._call_hook("server_request_hook", self._server_request_hook, span, scope)
        return attributes

    def _receive_for(self, span: trace.Span, scope: Scope, receive: Receive) -> Receive:
        hook = self._client_request_hook
        if hook is None:
            return receive

        async def receive_calling_hook() -> Message:
            message = await receive()
            self._call_hook("client_request_hook", hook, span, scope, message)
            return message

        return receive_calling_hook

    @staticmethod
    def _call_hook(name: str, hook: Callable[..., None], *args: object) -> None:
        """Run a user hook; its failure is reported once and never reaches the request."""
        try:
            hook(*args)
        except Exception:
            report_once(name, f"asgi_observe: the tracing {name} raised; the request goes on")

    def _captured(
        self,
        scope_or_message: Scope | Message,
        patterns: list[str],
        normalize: Callable[[str], str],
    ) -> dict[str, types.AttributeValue]:
        """``http.{request,response}.header.<name>`` attributes, sanitized by name with
        the contrib's rules, then each value redacted like every other string."""
        captured = collect_custom_headers_attributes(
            dict(scope_or_message), self._sanitize, patterns, normalize
        )
        return {
            key: [self._redacted(value) for value in values] for key, values in captured.items()
        }

    def _redacted(self, raw: bytes | str) -> str:
        """`raw` decoded and redacted, memoised: redaction costs 1-20 µs a string, and
        user agents, hosts, client addresses and most paths repeat across requests."""
        cached = self._texts.get(raw)
        if cached is None:
            cached = redact_text(raw.decode("latin-1") if isinstance(raw, bytes) else raw)
            if len(raw) <= _MEMO_MAX_TEXT:  # bounded in bytes as well as in entries
                if len(self._texts) >= _TEXT_CACHE_SIZE:
                    self._texts.clear()  # a flood of unique values cannot grow it
                self._texts[raw] = cached
        return cached

    def _redacted_query(self, raw: bytes) -> str:
        """The access log's redaction (`asgi_observe.pii.redact_query`), memoised for
        short queries: repeated ones (pagination, filters) are common, long ones rare."""
        cached = self._queries.get(raw)
        if cached is None:
            cached = redact_query(raw.decode("latin-1"))
            if len(raw) <= _MEMO_MAX_TEXT:
                if len(self._queries) >= _TEXT_CACHE_SIZE:
                    self._queries.clear()
                self._queries[raw] = cached
        return cached

    def _server(self, host: bytes) -> tuple[str, int | None]:
        """``server.address`` (redacted) and ``server.port`` from a ``Host`` header."""
        found = self._hosts.get(host)
        if found is None:
            address, port = _split_host(host.decode("latin-1"))
            found = (redact_text(address), port)
            if len(host) <= _MEMO_MAX_TEXT:
                if len(self._hosts) >= _TEXT_CACHE_SIZE:
                    self._hosts.clear()
                self._hosts[host] = found
        return found

    def _client_address(self, scope: Scope) -> str | None:
        """``client.address``: `client_ip`, redacted; memoised per peer host when no proxy
        is trusted (the rule then reads nothing else), as parsing and re-formatting the
        address cost a few µs per span and a handful of peers send most requests."""
        client = scope.get("client")
        if (
            self._trusted_proxies
            or type(client) not in {tuple, list}
            or not client
            or type(client[0]) is not str
            or len(client[0]) > 64  # longer than any address: worked out each time
        ):
            found = client_ip(scope, self._trusted_proxies)
            return self._redacted(found) if found else None
        host = client[0]
        try:
            return self._clients[host]
        except KeyError:
            found = client_ip(scope, self._trusted_proxies)
            address = self._redacted(found) if found else None
            if len(self._clients) >= _TEXT_CACHE_SIZE:
                self._clients.clear()
            self._clients[host] = address
            return address

    def _request_attributes(
        self, scope: Scope, name: str, host: bytes | None, agent: bytes | None
    ) -> dict[str, types.AttributeValue]:
        method = scope.get("method", "GET")
        known = name != "HTTP"
        attributes: dict[str, types.AttributeValue] = {
            "http.request.method": method if known else "_OTHER",
            "url.scheme": scope.get("scheme") or "http",
            "url.path": self._redacted(scope.get("path", "")),
        }
        if not known:
            attributes["http.request.method_original"] = redact_text(str(method))
        query = scope.get("query_string")
        if query:
            attributes["url.query"] = self._redacted_query(query)
        if host:
            address, port = self._server(host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        else:
            server = scope.get("server")
            if server:
                attributes["server.address"] = self._redacted(str(server[0]))
                if server[1] is not None:
                    attributes["server.port"] = server[1]
        client = self._client_address(scope)
        if client:
            attributes["client.address"] = client
        if agent:
            attributes["user_agent.original"] = self._redacted(agent)
        if self._capture_request:
            attributes.update(
                self._captured(scope, self._capture_request, normalise_request_header_name)
            )
        request_id = scope.get(self._request_id_key)
        if request_id:
            request_id = str(request_id)
            # A canonical UUID or 32-hex id cannot hold personal data (and redact()
            # leaves it alone); skipping it saves the slow path digit runs trigger.
            attributes["request_id"] = (
                request_id if _PLAIN_ID.fullmatch(request_id) else redact_text(request_id)
            )
        return attributes

    def _finish(
        self,
        span: trace.Span,
        scope: Scope,
        *,
        name: str,
        attributes: dict[str, types.AttributeValue],
        status: int,
        error: Exception | None,
    ) -> None:
        if status == 0 and error is not None:
            status = 500  # what the server answers for an app that raised before responding
        route = resolve_route(scope, self._resolver, status=status or None)
        if route:
            span.update_name(f"{name} {route}")
            attributes["http.route"] = route
        if status:
            attributes["http.response.status_code"] = status
        if error is not None:
            record_exception_on(span, error, escaped=True)
        elif status >= 500:
            attributes["error.type"] = str(status)
            span.set_status(Status(_ERROR))
        span.set_attributes(attributes)

    @staticmethod
    def _traceresponse_value(span: trace.Span) -> tuple[bytes, bytes]:
        ctx = span.get_span_context()
        value = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"
        return (b"traceresponse", value.encode("ascii"))

    def _with_traceresponse(self, span: trace.Span, send: Send) -> Send:
        header = self._traceresponse_value(span)

        async def send_with_traceresponse(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        return send_with_traceresponse
