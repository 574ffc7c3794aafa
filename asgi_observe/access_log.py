"""The access log: one structured, PII-safe event per HTTP request.

This module owns `AccessLogMiddleware`. The event is written when the response has
completed (or the app raised), with the fields of the public contract: ``method``,
``path`` (sensitive query values and personal data redacted), ``route`` (the template,
from `asgi_observe.routes.resolve_route`), ``status``, ``duration_ms``, ``client_ip``
(``X-Forwarded-For`` believed only from trusted proxies), ``user_agent``,
``response_size``, ``request_id``, ``trace_id`` and ``span_id``. Everything taken from
the request is bounded in length and has control characters escaped, so a path or user
agent cannot forge log lines or drive a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection
from time import perf_counter
from typing import Any
from urllib.parse import quote, unquote_plus

from opentelemetry.trace import get_current_span

from asgi_observe._client_ip import client_ip
from asgi_observe.logging import _write_event, get_logger
from asgi_observe.pii import REDACTED, is_sensitive_key, redact_text
from asgi_observe.request_id import SCOPE_KEY as REQUEST_ID_KEY
from asgi_observe.request_id import get_request_id
from asgi_observe.routes import RouteResolver, resolve_route
from asgi_observe.settings import IPNetwork
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "DEFAULT_SENSITIVE_QUERY_PARAMS",
    "AccessLogMiddleware",
    "escape_control",
]

internal_logger = logging.getLogger("asgi_observe")

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = ("/metrics", "/health/live", "/health/ready")

DEFAULT_SENSITIVE_QUERY_PARAMS: tuple[str, ...] = (
    "code",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
)
"""Query parameters redacted on top of the sensitive-key rule of `asgi_observe.pii`
(which already covers ``token``, ``access_token``, ``api_key``, ``password``, ...):
OAuth authorization codes, API keys and signed-URL signatures."""

FIELD_NAMES: tuple[str, ...] = (
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
    "error",
)
"""The keys of an access-log line besides those every line has (``event``, ...)."""

# Whether `_write_event` may redact the values of the line without looking their keys
# up: none of them is a sensitive one. Decided here once rather than assumed.
_PLAIN_KEYS = not any(is_sensitive_key(key) for key in FIELD_NAMES)

MAX_PATH = 2048
MAX_USER_AGENT = 512
MAX_QUERY_PARAMS = 64
EVENT = "request"
LOGGER_NAME = "asgi_observe.access"


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_control(text: str, limit: int) -> str:
    """Escape non-printable characters (CR, LF, ESC, C1 controls, line separators, ...)
    as ``\\xNN`` and cut `text` to `limit` characters (marking the cut with ``...``)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


def _method(method: Any) -> str:
    if method in _METHODS:
        return method  # type: ignore[no-any-return]
    return escape_control(str(method or ""), 32)


def _decode(part: str) -> str:
    return unquote_plus(part) if ("%" in part or "+" in part) else part


def _redacted_part(raw: str, decoded: str | None = None) -> str:
    """A query name or value as sent, unless its decoded form holds something to redact
    (``%40`` is an ``@`` too): then the redacted text, percent-encoded again."""
    if decoded is None:
        decoded = _decode(raw)
    redacted = redact_text(decoded)
    return raw if redacted == decoded else quote(redacted, safe="[]_")


class AccessLogMiddleware:
    """One structured event per HTTP request, written when the response completes.

    The level follows the status: ``error`` for 5xx (including an app exception, logged
    as status 500 with an ``error`` field before it is re-raised unchanged), ``warning``
    for 4xx, ``info`` otherwise. Paths in `exclude_paths` (exact match) and non-HTTP
    scopes pass through without an event. A failure while building or writing the
    event is reported on the ``asgi_observe`` logger and never reaches the request.

    With the default logger, while `configure_logging`'s production setup is in force,
    the line is rendered and written by `asgi_observe.logging` directly: the same line
    as the logger would write, for about half the cost. Any other setup (console,
    ``structlog.testing.capture_logs``, your own ``structlog.configure``) and any
    `logger` you pass get the event through the logger.

    Args:
        app: the ASGI app to wrap.
        logger: a structlog-style logger (``info``/``warning``/``error`` taking keyword
            fields); ``get_logger("asgi_observe.access")`` by default.
        exclude_paths: paths that are not logged (probes and scrapes by default).
        trusted_proxies: networks whose ``X-Forwarded-For`` is believed for ``client_ip``.
        route_resolver: a hook giving the route template, tried before the built-in one.
        sensitive_query_params: query parameter names whose values are replaced by
            ``[REDACTED]``, on top of `asgi_observe.pii.SENSITIVE_KEYS`.
        event: the event name of the access-log line.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: Any | None = None,
        exclude_paths: Collection[str] = DEFAULT_EXCLUDE_PATHS,
        trusted_proxies: Collection[IPNetwork] = (),
        route_resolver: RouteResolver | None = None,
        sensitive_query_params: Collection[str] = DEFAULT_SENSITIVE_QUERY_PARAMS,
        event: str = EVENT,
    ) -> None:
        self.app = app
        # With the default logger, lines take the cheaper route of `_write_event` while
        # configure_logging's production pipeline is in force (same output).
        self._direct = logger is None
        self._logger = logger if logger is not None else get_logger(LOGGER_NAME)
        self._exclude = frozenset(exclude_paths)
        self._trusted = tuple(trusted_proxies)
        self._route_resolver = route_resolver
        self._sensitive_params = frozenset(
            name.lower().replace("-", "_") for name in sensitive_query_params
        )
        self._event = event
        self._queries: dict[bytes, str] = {}
        self._report_lock = threading.Lock()
        self._next_report = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exclude:
            await self.app(scope, receive, send)
            return

        start = perf_counter()
        status = 500  # what the server answers when the app raises before responding
        size = 0
        error: BaseException | None = None

        async def send_measuring_response(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.body":
                size += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_measuring_response)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emit(scope, status, size, perf_counter() - start, error)

    def _emit(
        self, scope: Scope, status: int, size: int, elapsed: float, error: BaseException | None
    ) -> None:
        try:
            context = get_current_span().get_span_context()
            if context.is_valid:
                trace_id: str | None = format(context.trace_id, "032x")
                span_id: str | None = format(context.span_id, "016x")
            else:
                trace_id = span_id = None
            request_id = scope.get(REQUEST_ID_KEY) or get_request_id()
            user_agent = None
            for name, value in scope.get("headers") or ():
                if name == b"user-agent":
                    user_agent = escape_control(
                        redact_text(value.decode("latin-1")), MAX_USER_AGENT
                    )
                    break
            fields: dict[str, Any] = {
                "method": _method(scope.get("method")),
                "path": self._path(scope),
                "route": resolve_route(scope, self._route_resolver, status=status),
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 3),
                "client_ip": client_ip(scope, self._trusted),
                "user_agent": user_agent,
                "response_size": size,
                "request_id": request_id,
                "trace_id": trace_id,
                "span_id": span_id,
            }
            if error is not None:
                fields["error"] = escape_control(
                    redact_text(f"{type(error).__qualname__}: {error}"), MAX_PATH
                )
            level = "error" if status >= 500 else "warning" if status >= 400 else "info"
            if self._direct and _write_event(
                LOGGER_NAME, level, self._event, fields, plain_keys=_PLAIN_KEYS
            ):
                return
            logger = self._logger
            if status >= 500:
                logger.error(self._event, **fields)
            elif status >= 400:
                logger.warning(self._event, **fields)
            else:
                logger.info(self._event, **fields)
        except Exception:
            self._report_failure()

    def _path(self, scope: Scope) -> str:
        path = scope.get("path") or ""
        if not isinstance(path, str):
            path = str(path)
        path = redact_text(path)
        raw_query = scope.get("query_string") or b""
        if raw_query:
            query = self._queries.get(raw_query)
            if query is None:
                query = self._query(raw_query.decode("latin-1"))
                if len(raw_query) <= 256:  # repeated queries (pagination, filters) are common
                    if len(self._queries) >= 1024:
                        self._queries.clear()
                    self._queries[raw_query] = query
            path = f"{path}?{query}"
        return escape_control(path, MAX_PATH)

    def _query(self, query: str) -> str:
        if len(query) > MAX_PATH:
            query = query[:MAX_PATH]
        pairs = query.split("&", MAX_QUERY_PARAMS)
        rest = pairs.pop() if len(pairs) > MAX_QUERY_PARAMS else None
        out: list[str] = []
        for pair in pairs:
            name, sep, value = pair.partition("=")
            decoded_name = _decode(name)
            if sep:
                normalized = decoded_name.lower().replace("-", "_")
                if normalized in self._sensitive_params or is_sensitive_key(normalized):
                    out.append(f"{_redacted_part(name, decoded_name)}={REDACTED}")
                    continue
                out.append(f"{_redacted_part(name, decoded_name)}={_redacted_part(value)}")
            else:
                out.append(_redacted_part(name, decoded_name))
        if rest is not None:
            out.append("...")
        return "&".join(out)

    def _report_failure(self) -> None:
        now = time.monotonic()
        with self._report_lock:
            if now < self._next_report:
                return
            self._next_report = now + 60.0
        with contextlib.suppress(Exception):  # the reporting logger itself is broken
            internal_logger.warning("could not write the access log line", exc_info=True)
