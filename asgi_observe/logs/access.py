"""The access log: one structured, PII-safe event per HTTP request or websocket connection.

This module owns `AccessLogMiddleware`. The event is written as the response completes
(its last body message is sent) or when the app raises before that, with the fields of the public contract: ``method``,
``path`` (sensitive query values and personal data redacted by
`asgi_observe.pii.redact_query`, as in the span's ``url.query``), ``route`` (the template,
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

from opentelemetry.trace import SpanContext, get_current_span

from asgi_observe import pii
from asgi_observe._websocket import ERROR, REJECTED, WebSocketSession
from asgi_observe.logs.config import get_logger, write_event, write_prepared_event
from asgi_observe.net import IPNetwork, client_ip
from asgi_observe.pii import is_sensitive_key, redact_query, redact_text, uses_default_patterns
from asgi_observe.request_id import SCOPE_KEY as REQUEST_ID_KEY
from asgi_observe.request_id import get_request_id
from asgi_observe.routes import RouteResolver, resolve_route
from asgi_observe.settings import PROBE_PATHS
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "DEFAULT_SENSITIVE_QUERY_PARAMS",
    "WEBSOCKET_EVENT",
    "WEBSOCKET_FIELD_NAMES",
    "AccessLogMiddleware",
    "escape_control",
]

internal_logger = logging.getLogger("asgi_observe")

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = PROBE_PATHS
"""The scrape and probe endpoints (`asgi_observe.settings.PROBE_PATHS`)."""

DEFAULT_SENSITIVE_QUERY_PARAMS = pii.DEFAULT_SENSITIVE_QUERY_PARAMS
"""An alias of `asgi_observe.pii.DEFAULT_SENSITIVE_QUERY_PARAMS`, kept importable here."""

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

WEBSOCKET_FIELD_NAMES: tuple[str, ...] = (
    "path",
    "route",
    "outcome",
    "close_code",
    "duration_ms",
    "messages_received",
    "messages_sent",
    "client_ip",
    "user_agent",
    "request_id",
    "trace_id",
    "span_id",
    "error",
)
"""The keys of a websocket connection's line besides those every line has."""

# Whether `write_event` may redact the values of the line without looking their keys
# up: none of them is a sensitive one. Decided here once rather than assumed.
_PLAIN_KEYS = not any(is_sensitive_key(key) for key in FIELD_NAMES)
_WEBSOCKET_PLAIN_KEYS = not any(is_sensitive_key(key) for key in WEBSOCKET_FIELD_NAMES)

MAX_PATH = 2048
MAX_USER_AGENT = 512
EVENT = "request"
WEBSOCKET_EVENT = "websocket"
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


# The shapes of ``scope["client"]`` whose host `_client_ip` memoises (a constant: a set
# display of names is built anew on every call).
_PEER_TYPES = frozenset({tuple, list})


def _plain(text: str) -> bool:
    """Whether the log pipeline's redaction leaves `text` as it is, under the default
    patterns (False under others: nothing is known then). Asked once per memoised value."""
    return uses_default_patterns() and redact_text(text) == text


class AccessLogMiddleware:
    """One structured event per HTTP request, written when the response completes, and
    one per websocket connection, written when it ends (see `_log_websocket`).

    ``duration_ms`` ends when the final body message (``more_body`` false) is sent, and
    the line is written then, before that message is passed on: work the app does
    afterwards (Starlette's ``BackgroundTask``) neither inflates the duration nor delays
    the line, and an exception it raises is not logged a second time. An app that raises
    before completing its response gets its line when it raises; so does a 5xx
    response, whose line waits for the app to return so that it carries the exception
    Starlette's ``ServerErrorMiddleware`` re-raises after sending its 500. The level follows the status: ``error`` for 5xx (including an app exception, logged
    as status 500 with an ``error`` field before it is re-raised unchanged), ``warning``
    for 4xx, ``info`` otherwise. Paths in `exclude_paths` (exact match, relative to
    ``root_path`` when the path starts with it) and lifespan scopes pass through
    without an event. A failure while building or writing the
    event is reported on the ``asgi_observe`` logger and never reaches the request.

    With the default logger, while `configure_logging`'s production setup is in force,
    the line is rendered and written by `asgi_observe.logs.config` directly
    (`write_prepared_event`): the same line as the logger would write, byte for byte, for
    a fraction of the cost; values redacted here already (path, user agent) or plain by
    construction (numbers, known methods, hex ids) are not redacted a second time. Any other setup (console,
    ``structlog.testing.capture_logs``, your own ``structlog.configure``) and any
    `logger` you pass get the event through the logger.

    Args:
        app: the ASGI app to wrap.
        logger: a structlog-style logger (``info``/``warning``/``error`` taking keyword
            fields); ``get_logger("asgi_observe.access")`` by default.
        exclude_paths: paths that are not logged (probes and scrapes by default), as
            seen by the app: without the ``root_path`` it is mounted under.
        trusted_proxies: networks whose ``X-Forwarded-For`` is believed for ``client_ip``.
        route_resolver: a hook giving the route template, tried before the built-in one.
        sensitive_query_params: query parameter names whose values are replaced by
            ``[REDACTED]``, on top of `asgi_observe.pii.SENSITIVE_KEYS` (see
            `asgi_observe.pii.redact_query`).
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
        # With the default logger, lines take the cheaper route of `write_event` while
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
        # Memoised redactions: caches, not request state. Values written to the line
        # come with whether the pipeline's redaction leaves them unchanged (`_plain`),
        # so the direct route need not redact them again per line.
        self._queries: dict[bytes, str] = {}
        self._agents: dict[bytes, tuple[str, bool]] = {}
        self._routes: dict[str, bool] = {}
        self._event_plain = _plain(event)
        # The peer's address as text, by the scope's client host: with no trusted proxy
        # `client_ip` reads nothing else, and parsing and re-formatting the address
        # costs more than the rest of the field (a handful of clients send most lines).
        self._clients: dict[str, tuple[str | None, bool]] = {}
        self._report_lock = threading.Lock()
        self._next_report = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._log_websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # Excluded paths are compared relative to the mount point: behind
        # ``--root-path /api`` (or inside a Mount) ``path`` is ``/api/health/live``.
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path in self._exclude:
            await self.app(scope, receive, send)
            return

        start = perf_counter()
        status = 500  # what the server answers when the app raises before responding
        size = 0
        elapsed: float | None = None  # set when the response completes
        logged = False

        async def send_measuring_response(message: Message) -> None:
            nonlocal status, size, elapsed, logged
            kind = message["type"]
            if kind == "http.response.body":
                size += len(message.get("body", b""))
                if not message.get("more_body", False) and elapsed is None:
                    elapsed = perf_counter() - start
                    if status < 500:
                        # Written now, before the last byte leaves: background tasks run
                        # after it count neither in the duration nor in when the line
                        # appears, and a client that has read its response finds it.
                        logged = True
                        self._emit(scope, status, size, elapsed, None)
            elif kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.pathsend" and elapsed is None:  # a file, sent whole
                elapsed = perf_counter() - start
                if status < 500:
                    logged = True
                    self._emit(scope, status, size, elapsed, None)
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_measuring_response)
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Written here when the app raised (or returned) before completing its
            # response, and for a 5xx: Starlette's ServerErrorMiddleware sends its 500
            # and then re-raises, and the line is to carry that exception. An exception
            # after a completed non-5xx response (a failing background task) propagates
            # without a second line.
            if not logged:
                if elapsed is None:
                    elapsed = perf_counter() - start
                self._emit(scope, status, size, elapsed, error)

    def _emit(
        self,
        scope: Scope,
        status: int,
        size: int,
        elapsed: float,
        error: BaseException | None,
        *,
        span_context: SpanContext | None = None,
    ) -> None:
        """Write the line of the request `scope`: `status`, `size` bytes sent, `elapsed`
        seconds, and the app's `error` if it raised. A caller that holds the request
        span's context passes it as `span_context`, saving the current-span lookup."""
        try:
            if span_context is None:
                span_context = get_current_span().get_span_context()
            trace_id: str | None = None
            span_id: str | None = None
            if span_context.is_valid:
                try:  # the digits of f"{id:032x}" (a valid id fits), for less
                    trace_id = span_context.trace_id.to_bytes(16, "big").hex()
                    span_id = span_context.span_id.to_bytes(8, "big").hex()
                except (AttributeError, OverflowError):  # not an int of that size
                    trace_id = f"{span_context.trace_id:032x}"
                    span_id = f"{span_context.span_id:016x}"
            request_id = scope.get(REQUEST_ID_KEY) or get_request_id()
            method = scope.get("method")
            method_plain = method in _METHODS
            if not method_plain:
                method = _method(method)
            path, path_plain = self._checked_path(scope)
            route = resolve_route(scope, self._route_resolver, status=status)
            client, client_plain = self._client_ip(scope)
            user_agent = None
            agent_plain = True
            for name, value in scope.get("headers") or ():
                if name == b"user-agent":
                    memo = self._agents.get(value)
                    if memo is None:
                        memo = self._agent_entry(value)
                    user_agent, agent_plain = memo
                    break
            duration = round(elapsed * 1000.0, 3)
            fields: dict[str, Any] = {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": duration,
                "client_ip": client,
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
            if self._direct:
                unchecked = self._unchecked(
                    fields, method_plain, path_plain, client_plain, agent_plain
                )
                if unchecked is not None:
                    if write_prepared_event(LOGGER_NAME, level, self._event, fields, unchecked):
                        return
                elif write_event(LOGGER_NAME, level, self._event, fields, plain_keys=_PLAIN_KEYS):
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

    def _unchecked(
        self,
        fields: dict[str, Any],
        method_plain: bool,
        path_plain: bool,
        client_plain: bool,
        agent_plain: bool,
    ) -> list[str] | None:
        """The keys of `fields` whose values `write_prepared_event` must still redact:
        those not known to come out of redaction unchanged. None when a value is of a
        kind that route does not take (the general `write_event` then redacts all)."""
        duration = fields["duration_ms"]
        if not (
            _PLAIN_KEYS
            and self._event_plain
            and type(fields["status"]) is int
            and type(fields["response_size"]) is int
            and type(duration) is float
            and not duration - duration  # finite: inf - inf and NaN - NaN are NaN
        ):
            return None
        unchecked = [] if path_plain else ["path"]
        if not method_plain:
            unchecked.append("method")
        route = fields["route"]
        if route is not None and not self._route_plain(route):
            unchecked.append("route")
        if not client_plain:
            unchecked.append("client_ip")
        if not agent_plain:
            unchecked.append("user_agent")
        request_id = fields["request_id"]
        # Plain: a string of 16 or more ASCII letters and digits with a letter in it (a
        # generated id), which the default patterns leave alone (`uses_default_patterns`).
        if request_id is not None and not (
            type(request_id) is str
            and len(request_id) >= 16
            and request_id.isalnum()
            and request_id.isascii()
            and not request_id.isdigit()
        ):
            if type(request_id) is not str:
                return None
            unchecked.append("request_id")
        trace_id, span_id = fields["trace_id"], fields["span_id"]
        if trace_id is not None:
            # 32 and 16 hex digits: plain unless digits only (1 span id in 2,000), which
            # a number pattern may take for a card number.
            if trace_id.isdigit():
                unchecked.append("trace_id")
            if span_id.isdigit():
                unchecked.append("span_id")
        if "error" in fields:
            unchecked.append("error")
        return unchecked

    log_request = _emit  # for `instrument()`'s one-layer path (asgi_observe.pipeline)

    async def _log_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One line per websocket connection, written when the app returns or raises.

        The event is `WEBSOCKET_EVENT` with `WEBSOCKET_FIELD_NAMES`: ``outcome``
        (``accepted``, ``rejected``, ``error``), ``close_code`` (the app's
        ``websocket.close`` code, else the client's ``websocket.disconnect`` code, else
        null), ``duration_ms`` (from accept to the end of the connection; from its arrival
        for a connection never accepted), the ``websocket.receive`` and ``websocket.send``
        messages counted each way, and the request fields of an HTTP line. Level:
        ``error`` for an app exception (re-raised unchanged), ``warning`` for a rejected
        connection, ``info`` otherwise. Messages pass through untouched.
        """
        if self._exclude and self._relative_path(scope) in self._exclude:
            await self.app(scope, receive, send)
            return
        session = WebSocketSession()

        async def receive_counting() -> Message:
            message = await receive()
            session.on_receive(message)
            return message

        async def send_counting(message: Message) -> None:
            session.on_send(message)
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive_counting, send_counting)
        except Exception as exc:  # a cancelled task is not the app failing
            error = exc
            session.error = True
            raise
        finally:
            session.end()
            self._emit_websocket(scope, session, error)

    @property
    def excluded_paths(self) -> frozenset[str]:
        """The exact paths (below ``root_path``) that get no line: `excludes`' rule."""
        return self._exclude

    def excludes(self, scope: Scope) -> bool:
        """Whether the request `scope` gets no access-log line (`exclude_paths`)."""
        return bool(self._exclude) and self._relative_path(scope) in self._exclude

    @staticmethod
    def _relative_path(scope: Scope) -> str:
        path: str = scope.get("path") or ""
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path

    def _emit_websocket(
        self, scope: Scope, session: WebSocketSession, error: BaseException | None
    ) -> None:
        try:
            context = get_current_span().get_span_context()
            fields: dict[str, Any] = {
                "path": self._path(scope),
                "route": resolve_route(scope, self._route_resolver),
                "outcome": session.outcome,
                "close_code": session.close_code,
                "duration_ms": round(session.duration() * 1000.0, 3),
                "messages_received": session.received,
                "messages_sent": session.sent,
                "client_ip": client_ip(scope, self._trusted),
                "user_agent": self._user_agent(scope)[0],
                "request_id": scope.get(REQUEST_ID_KEY) or get_request_id(),
                "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
                "span_id": format(context.span_id, "016x") if context.is_valid else None,
            }
            if error is not None:
                fields["error"] = escape_control(
                    redact_text(f"{type(error).__qualname__}: {error}"), MAX_PATH
                )
            outcome = session.outcome
            level = "error" if outcome == ERROR else "warning" if outcome == REJECTED else "info"
            if self._direct and write_event(
                LOGGER_NAME, level, WEBSOCKET_EVENT, fields, plain_keys=_WEBSOCKET_PLAIN_KEYS
            ):
                return
            getattr(self._logger, level)(WEBSOCKET_EVENT, **fields)
        except Exception:
            self._report_failure()

    def _client_ip(self, scope: Scope) -> tuple[str | None, bool]:
        """`asgi_observe.net.client_ip`, memoised per peer host when no proxy is trusted,
        and whether the text is plain (`_plain`; known only for memoised addresses)."""
        client = scope.get("client")
        if self._trusted or type(client) not in _PEER_TYPES or not client:
            found = client_ip(scope, self._trusted)
            return found, found is None
        host = client[0]
        if type(host) is not str or len(host) > 64:  # longer than any address: parsed each time
            found = client_ip(scope, self._trusted)
            return found, found is None
        try:
            return self._clients[host]
        except KeyError:
            found = client_ip(scope, self._trusted)
            entry = (found, found is None or _plain(found))
            if len(self._clients) >= 1024:
                self._clients.clear()  # a flood of distinct peers cannot grow it
            self._clients[host] = entry
            return entry

    def _user_agent(self, scope: Scope) -> tuple[str | None, bool]:
        """The ``user-agent`` header, redacted and escaped, and whether it is plain."""
        for name, value in scope.get("headers") or ():
            if name == b"user-agent":
                return self._agents.get(value) or self._agent_entry(value)
        return None, True

    def _agent_entry(self, value: bytes) -> tuple[str, bool]:
        agent = escape_control(redact_text(value.decode("latin-1")), MAX_USER_AGENT)
        entry = (agent, _plain(agent))
        if len(value) <= MAX_USER_AGENT:  # a few clients send most requests
            if len(self._agents) >= 1024:
                self._agents.clear()
            self._agents[value] = entry
        return entry

    def _route_plain(self, route: str) -> bool:
        """Whether the route template is plain (`_plain`): templates repeat, so memoised."""
        plain = self._routes.get(route)
        if plain is None:
            plain = type(route) is str and _plain(route)
            if len(self._routes) >= 1024:
                self._routes.clear()
            self._routes[route] = plain
        return plain

    def _path(self, scope: Scope) -> str:
        return self._checked_path(scope)[0]

    def _checked_path(self, scope: Scope) -> tuple[str, bool]:
        """The ``path`` field, and whether it is plain: true of a path that redaction
        left as it was, without a query and with nothing to escape -- redacting it again
        gives the same text, as redaction is a function of the text."""
        path = scope.get("path") or ""
        if not isinstance(path, str):
            path = str(path)
        redacted = redact_text(path)
        raw_query = scope.get("query_string") or b""
        if raw_query:
            query = self._queries.get(raw_query)
            if query is None:
                query = redact_query(
                    raw_query.decode("latin-1"), sensitive_params=self._sensitive_params
                )
                if len(raw_query) <= 256:  # repeated queries (pagination, filters) are common
                    if len(self._queries) >= 1024:
                        self._queries.clear()
                    self._queries[raw_query] = query
            return escape_control(f"{redacted}?{query}", MAX_PATH), False
        escaped = escape_control(redacted, MAX_PATH)
        return escaped, escaped is redacted and redacted == path

    def _report_failure(self) -> None:
        now = time.monotonic()
        with self._report_lock:
            if now < self._next_report:
                return
            self._next_report = now + 60.0
        with contextlib.suppress(Exception):  # the reporting logger itself is broken
            internal_logger.warning("could not write the access log line", exc_info=True)
