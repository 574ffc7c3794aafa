"""`TracingMiddleware`: one OpenTelemetry SERVER span per HTTP request, cheaply.

The per-request work is kept to what the span needs: one pass over the headers picks
out the propagation fields, ``host`` and ``user-agent``; W3C context is extracted only
when a propagation header is present; attributes are built only for sampled (recording)
spans; no child spans are made for ``http.request``/``http.response.*`` messages. The
route template is resolved once the response has started and renames the span to
``{METHOD} {template}``, so span names stay low-cardinality.

opentelemetry-instrumentation-asgi's ``OpenTelemetryMiddleware`` is not wrapped (it costs
several times more per request, see ``bench/bench_tracing.py``), and neither is its
``asgi_getter``: that decodes every header for each of the three lookups the default
propagators make, where the single scan here decodes only the propagation headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextvars import Token

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util import types

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
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_SCOPE_KEY", "TracingMiddleware"]

REQUEST_ID_SCOPE_KEY = "asgi_observe.request_id"
"""Where `RequestIdMiddleware` leaves the request id; recorded as the ``request_id`` attribute."""

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


_FASTAPI_TELEMETRY_KEY = "fastapi.telemetry"


class _ListGetter(Getter[Mapping[str, list[str]]]):
    """Reads the small carrier the header scan built (lowercase names, all values)."""

    def get(self, carrier: Mapping[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: Mapping[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _ListGetter()


def _compile_excluded(excluded_urls: Iterable[str] | str | None) -> re.Pattern[str] | None:
    if excluded_urls is None:
        return None
    if isinstance(excluded_urls, str):
        excluded_urls = excluded_urls.split(",")
    patterns = [item.strip() for item in excluded_urls if item and item.strip()]
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    except re.error as exc:
        msg = f"excluded_urls: {patterns!r} contains an invalid regular expression ({exc})"
        raise ValueError(msg) from None


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
    """One SERVER span per HTTP request; lifespan and websocket scopes pass through.

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
    ) -> None:
        self.app = app
        self._trusted_proxies = parse_networks(
            trusted_proxies, name="trusted_proxies (TRUSTED_PROXIES)"
        )
        if tracer_provider is None:
            self._tracer = trace.get_tracer(INSTRUMENTATION_NAME)
            self._app_tracer = trace.get_tracer(APP_TRACER_NAME)
        else:
            self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
            self._app_tracer = tracer_provider.get_tracer(APP_TRACER_NAME)
        # `tracer` already falls back to the global provider; an injected one is made
        # visible to it through the request's context.
        self._publish_tracer = tracer_provider is not None
        self._excluded = _compile_excluded(excluded_urls)
        self._excluded_by_url = self._excluded is not None and "://" in self._excluded.pattern
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

    def _propagation_fields(self, propagator: TextMapPropagator) -> frozenset[bytes]:
        fields = frozenset(name.lower().encode("latin-1") for name in propagator.fields)
        self._fields = (propagator, fields)
        return fields

    def _is_excluded(self, scope: Scope) -> bool:
        excluded = self._excluded
        if excluded is None:
            return False
        path: str = scope.get("path", "")
        if excluded.search(path) is not None:
            return True
        if self._excluded_by_url:
            host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
            url = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}{path}"
            return excluded.search(url) is not None
        return False

    def _start(
        self, scope: Scope
    ) -> tuple[trace.Span, Token[otel_context.Context], str, bytes | None, bytes | None]:
        """Start the span as the current one: (span, context token, name, host, user agent)."""
        propagator = self._propagator or propagate.get_global_textmap()
        cached, fields = self._fields
        if cached is not propagator:
            fields = self._propagation_fields(propagator)
        carrier: dict[str, list[str]] | None = None
        host = agent = None
        for key, value in scope.get("headers") or ():
            if key in fields:
                if carrier is None:
                    carrier = {}
                carrier.setdefault(key.decode("latin-1"), []).append(value.decode("latin-1"))
            elif key == b"host":
                host = value
            elif key == b"user-agent":
                agent = value
        parent = propagator.extract(carrier, getter=_GETTER) if carrier else None
        method = scope.get("method", "GET")
        name = method if method in KNOWN_METHODS else "HTTP"
        span = self._tracer.start_span(name, parent, _SERVER)
        context = trace.set_span_in_context(span, parent)
        if self._publish_tracer:
            context = otel_context.set_value(TRACER_CONTEXT_KEY, self._app_tracer, context)
        token = otel_context.attach(context)
        return span, token, name, host, agent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # FastAPI's native telemetry would start a second SERVER span, parented only on
        # the incoming headers (a separate trace); its own flag for "this request is
        # observed elsewhere" is the presence of this scope key.
        scope.setdefault(_FASTAPI_TELEMETRY_KEY, None)
        if self._excluded is not None and self._is_excluded(scope):
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

        # Built now (the app may rewrite the scope) but set once, with the response's, at
        # the end: one validation pass in the SDK instead of two.
        try:
            attributes = self._request_attributes(scope, name, host, agent)
        except Exception:
            report_once("attributes", "asgi_observe: building span attributes failed")
            attributes = {}
        status = 0
        trace_header = self._traceresponse_value(span) if self._traceresponse else None

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message.get("status", 0)
                if trace_header is not None:
                    message["headers"] = [*message.get("headers", ()), trace_header]
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_recording_status)
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
        client = client_ip(scope, self._trusted_proxies)
        if client:
            attributes["client.address"] = self._redacted(client)
        if agent:
            attributes["user_agent.original"] = self._redacted(agent)
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
