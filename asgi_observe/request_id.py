"""The request id: accepted or generated per connection, echoed, and bound for logs.

This module owns the request-id ContextVar (`get_request_id()`), the default validator
and generator, and `RequestIdMiddleware`. The id is put in three places for the rest of
the stack: the ContextVar, structlog's contextvars (so every log line of the request
carries ``request_id``), and ``scope["asgi_observe.request_id"]`` (read by the tracing
and access-log middlewares and by inner apps).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextvars import ContextVar, Token
from random import getrandbits
from typing import Any, Protocol

from structlog.contextvars import bind_contextvars, reset_contextvars

from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_HEADER",
    "SCOPE_KEY",
    "RequestContextTokens",
    "RequestIdGenerator",
    "RequestIdMiddleware",
    "RequestIdValidator",
    "bind_request_context",
    "generate_request_id",
    "get_request_id",
    "is_valid_request_id",
    "reset_request_context",
    "with_request_id_header",
]

logger = logging.getLogger("asgi_observe")

DEFAULT_HEADER = "X-Request-ID"
SCOPE_KEY = "asgi_observe.request_id"
"""The scope key holding the id of the current request or websocket connection."""

MAX_LENGTH = 128

request_id_var: ContextVar[str | None] = ContextVar("asgi_observe.request_id", default=None)


def _structlog_request_id_var() -> ContextVar[Any]:
    """The ContextVar structlog keeps ``request_id`` in, found through public API.

    `bind_contextvars` returns the tokens of the variables it set, and a token names its
    variable. Setting that variable directly is what `bind_contextvars` does, minus its
    per-call bookkeeping, which matters on a path run for every request.
    """
    tokens = bind_contextvars(request_id=None)
    reset_contextvars(**tokens)
    return tokens["request_id"].var


_structlog_var = _structlog_request_id_var()


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside requests."""
    return request_id_var.get()


class RequestIdValidator(Protocol):
    """Decide whether an incoming id may be used as is."""

    def __call__(self, value: str) -> bool: ...


class RequestIdGenerator(Protocol):
    """Make a fresh id; it should pass the validator in use."""

    def __call__(self) -> str: ...


_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,%d}" % MAX_LENGTH)  # noqa: UP031 - a regex quantifier


def is_valid_request_id(value: str) -> bool:
    """The default validator: 1-128 characters of ``[A-Za-z0-9._:-]``.

    That accepts UUIDs of any version, nginx's 32-hex ``$request_id``, W3C trace ids,
    ULIDs and the ids of most load balancers, while rejecting anything that could
    smuggle control characters, spaces, quotes or non-ASCII text into headers and logs.
    """
    return len(value) <= MAX_LENGTH and _VALID.fullmatch(value) is not None


_VERSION_4 = (0x4 << 76) | (0x2 << 62)  # the version nibble and the RFC 4122 variant bits
_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)


def generate_request_id() -> str:
    """A random UUID version 4 in 32-hex form, like ``uuid.uuid4().hex`` but cheaper.

    The shape is also that of nginx's ``$request_id`` and of a W3C trace id. The bits
    come from the `random` module (as OpenTelemetry's trace ids do), not from a
    ``getrandom`` system call per request: an id names a request, it guards nothing.
    The module's generator is seeded from the OS and reseeded in forked workers, so
    workers never repeat each other's ids.
    """
    return f"{getrandbits(128) & _KEEP | _VERSION_4:032x}"


class _RateLimitedWarning:
    """Warn about rejected ids at most once per interval, counting the ones suppressed."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, header: str, raw: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self._interval
        # repr() of a bounded prefix: control characters are escaped, size is capped.
        logger.warning(
            "rejected an invalid %s header %s (%d characters); generated a new id "
            "(%d similar warnings suppressed)",
            header,
            repr(raw[:64]),
            len(raw),
            suppressed,
        )


def _is_header(name: bytes, wanted: bytes) -> bool:
    """`name` is `wanted` (lowercase) in any letter case; the common case costs one compare."""
    return name == wanted or (len(name) == len(wanted) and bytes(name).lower() == wanted)


class RequestIdMiddleware:
    """Give every HTTP request and websocket connection an id; echo it; bind it for logs.

    A valid incoming ``header_name`` header is used as is; a missing or invalid one (by
    `validator`) is replaced by ``generator()``, with a rate-limited warning on the
    ``asgi_observe`` logger for invalid ones. With repeated headers the first is used.
    The id is set in `get_request_id()`, in structlog's contextvars as ``request_id``
    and in ``scope["asgi_observe.request_id"]``; both contextvars are reset when the
    request ends. It is echoed in the response headers (and in the headers of a
    websocket's ``websocket.accept``), including responses sent by inner error handlers
    such as Starlette's ``ServerErrorMiddleware``. When the app already set the header
    itself (in any letter case), its value wins and no second header is added; logs and
    spans still carry the id chosen here. When the app raises *without* having
    started a response, the server writes its own 500 and no middleware can add headers
    to it. Lifespan scopes pass through; a scope that already carries an id (an outer
    instance ran) passes through too.

    Args:
        app: the ASGI app to wrap.
        header_name: the request and response header carrying the id.
        validator: accepts or rejects an incoming id; `is_valid_request_id` by default.
        generator: makes a new id; `generate_request_id` (32 hex digits) by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header_name: str = DEFAULT_HEADER,
        validator: RequestIdValidator = is_valid_request_id,
        generator: RequestIdGenerator = generate_request_id,
    ) -> None:
        if not header_name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+", header_name):
            msg = f"header_name must be an HTTP header field name, got {header_name!r}"
            raise ValueError(msg)
        self.app = app
        self.header_name = header_name
        self._header = header_name.lower().encode("latin-1")
        self._validator = validator
        self._generator = generator
        self._warn_invalid = _RateLimitedWarning()

    def _accept(self, raw: str) -> bool:
        validator = self._validator
        if validator is is_valid_request_id:
            return is_valid_request_id(raw)
        try:
            return bool(validator(raw))
        except Exception:
            logger.warning(
                "the request id validator raised; treating the id as invalid", exc_info=True
            )
            return False

    def _generate(self) -> str:
        if self._generator is generate_request_id:
            return generate_request_id()
        try:
            value = self._generator()
            value.encode("latin-1")  # it goes into a header: must be encodable
        except Exception:
            logger.warning("the request id generator failed; using the default", exc_info=True)
            return generate_request_id()
        if not isinstance(value, str) or not value or not value.isprintable():
            logger.warning("the request id generator returned %r; using the default", value)
            return generate_request_id()
        return value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return

        request_id, header = self.assign(scope)
        wanted = self._header
        start_type = "http.response.start" if kind == "http" else "websocket.accept"

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == start_type:
                message = with_request_id_header(message, header, wanted)
            await send(message)

        tokens = bind_request_context(request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            reset_request_context(tokens)

    def assign(self, scope: Scope) -> tuple[str, tuple[bytes, bytes]]:
        """Choose the request's id, record it in the scope; (id, response header to echo).

        `instrument()`'s one-layer path calls this too, so both paths choose alike.
        """
        wanted = self._header
        raw = None
        for name, value in scope.get("headers") or ():
            if name == wanted:
                # latin-1 maps every byte to one character: non-UTF-8 bytes cannot make
                # decoding fail, and they then fail validation as non-ASCII.
                raw = value.decode("latin-1")
                break
        if raw is not None and self._accept(raw):
            request_id = raw
        else:
            if raw is not None:
                self._warn_invalid(self.header_name, raw)
            request_id = self._generate()
        scope[SCOPE_KEY] = request_id
        return request_id, (wanted, request_id.encode("latin-1"))


RequestContextTokens = tuple[Token[str | None], Token[Any]]
"""What `bind_request_context` returns and `reset_request_context` takes."""


def bind_request_context(request_id: str) -> RequestContextTokens:
    """Set the id in `get_request_id()` and in structlog's contextvars, for one request."""
    return request_id_var.set(request_id), _structlog_var.set(request_id)


def reset_request_context(tokens: RequestContextTokens) -> None:
    """Undo `bind_request_context` when the request ends."""
    _structlog_var.reset(tokens[1])
    request_id_var.reset(tokens[0])


def with_request_id_header(message: Message, header: tuple[bytes, bytes], wanted: bytes) -> Message:
    """`message` (a response start) with the request-id `header` added, unless the app set it.

    An id the app set itself wins, in any letter case: the ASGI spec asks for lowercase
    names, but servers pass what apps send onto the wire, and two X-Request-ID headers
    would confuse every proxy and client. A new list and message are made: frameworks
    may reuse the headers list of a response object, which must not grow per request.
    """
    headers = message.get("headers") or ()
    for name, _ in headers:
        if len(name) == len(wanted) and _is_header(name, wanted):
            return message
    return {**message, "headers": [*headers, header]}
