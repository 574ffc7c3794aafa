"""Structured logging: one configuration for structlog and the standard library.

This module owns `configure_logging`, `get_logger`, the request-context helpers
(`bind_request_id`, `clear_context`), the `TraceContextAdder` processor and the safe
JSON serializer. Production renders one JSON object per line; every other environment
renders readable console lines. Both structlog events and stdlib records (uvicorn,
third-party libraries, our own ``asgi_observe`` warnings) pass the same processors --
context merge, exception formatting, PII redaction, logger name, level, ISO-8601 UTC
timestamp, trace and span ids -- and end up on the same stream under one lock, so lines
never interleave.

structlog events do not travel through `logging.LogRecord`s: they are rendered by
structlog and written directly, which is about three times cheaper per line than the
`ProcessorFormatter` round trip. stdlib records use `ProcessorFormatter` with the same
processors as its ``foreign_pre_chain``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
import threading
import time
from decimal import Decimal
from types import FrameType
from typing import Any, TextIO

import structlog
from opentelemetry.trace import get_current_span
from structlog.contextvars import bind_contextvars, clear_contextvars
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from asgi_observe.pii import PII_PATTERNS, PIIRedactor, redact
from asgi_observe.request_id import get_request_id, request_id_var
from asgi_observe.settings import Settings

__all__ = [
    "PII_PATTERNS",
    "StreamLogger",
    "TraceContextAdder",
    "UTCTimeStamper",
    "bind_request_id",
    "clear_context",
    "configure_logging",
    "get_logger",
    "get_request_id",
    "json_dumps",
]

# Loggers whose handlers servers install themselves; they are re-pointed at the root
# handler so their lines get the same format (uvicorn configures them before the app is
# imported, so configure_logging, called from the app, runs after it).
SERVER_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
    "hypercorn.error",
    "hypercorn.access",
)


class TraceContextAdder:
    """A structlog processor adding ``trace_id`` and ``span_id`` of the current span.

    Only a valid span context is used (the ids are then 32 and 16 lowercase hex digits,
    as in W3C trace context); keys already present in the event are kept.
    """

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "span_id" in event_dict:  # the access log passes them explicitly
            return event_dict
        context = get_current_span().get_span_context()
        if context.is_valid:
            event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
        return event_dict


def _json_default(value: Any) -> Any:
    """Render what `json` cannot; must never raise (a raising default loses the line)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__qualname__}>"


_encoder = json.JSONEncoder(default=_json_default, separators=(",", ":"), allow_nan=False)


def json_dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that renders anything: the serializer of the production renderer.

    Unknown objects go through a lenient default; structures json rejects outright
    (non-string keys, cycles, NaN) are sanitized with `redact` and dumped again. Output
    is ASCII (other characters are escaped), so any stream encoding can take it.
    """
    encoder = (
        _encoder
        if not kwargs
        else json.JSONEncoder(
            **{"default": _json_default, "separators": (",", ":"), "allow_nan": False, **kwargs}
        )
    )
    try:
        return encoder.encode(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        pass
    try:
        return encoder.encode(redact(value))
    except Exception:
        return json.dumps({"event": "unrenderable log event", "level": "error"})


class UTCTimeStamper:
    """A structlog processor adding ``timestamp``: ISO-8601 UTC with microseconds and ``Z``.

    Equivalent to ``TimeStamper(fmt="iso", utc=True)``, but formats the date and time
    once per second instead of once per line.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micros = int((now - second) * 1_000_000)
        event_dict["timestamp"] = f"{self._prefix}.{micros:06d}Z"
        return event_dict


class _Sink:
    """Where lines go: the stream and the lock shared with the stdlib root handler."""

    def __init__(self, stream: TextIO | None, lock: threading.RLock) -> None:
        self.stream = stream  # None: sys.stdout at write time (it can be replaced)
        self.lock = lock
        self.failed = False

    def write(self, line: str) -> None:
        try:
            with self.lock:
                stream = self.stream if self.stream is not None else sys.stdout
                stream.write(line + "\n")
                stream.flush()
        except Exception:
            # A closed pipe or a full disk must not raise into the request that logged.
            if not self.failed:
                self.failed = True
                with contextlib.suppress(Exception):  # nowhere left to report to
                    sys.__stderr__.write("asgi_observe: writing a log line failed\n")  # type: ignore[union-attr]


class _State:
    """The current sink, replaced as a whole by each configure_logging call."""

    sink = _Sink(None, threading.RLock())


_state = _State()


class StreamLogger:
    """The structlog logger of `configure_logging`: writes rendered lines to the sink.

    It has a ``name`` (for the ``logger`` key) and looks the sink up on every write, so
    loggers created before a reconfiguration follow it.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _state.sink.write(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg
    err = failure = msg

    def __repr__(self) -> str:
        return f"<StreamLogger {self.name!r}>"


_loggers: dict[str, StreamLogger] = {}


def _caller_module(depth: int) -> str:
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not (name.startswith("structlog") or name == __name__):
            return name or "root"
        frame = frame.f_back
    return "root"


def _logger_factory(*args: Any) -> StreamLogger:
    name = args[0] if args and isinstance(args[0], str) else _caller_module(2)
    found = _loggers.get(name)
    if found is None:
        found = StreamLogger(name)
        if len(_loggers) < 1024:
            _loggers[name] = found
    return found


class _RootHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler installed by configure_logging; recognised on reconfiguration."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__(sink.stream)
        self._sink = sink
        self.lock = sink.lock  # one lock for structlog lines and stdlib records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._sink.write(line)


_stack_info_renderer = structlog.processors.StackInfoRenderer()


def _render_exception_and_stack(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """``format_exc_info`` and ``StackInfoRenderer``, skipped when there is nothing to do."""
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    if "stack_info" in event_dict:
        event_dict = _stack_info_renderer(logger, method_name, event_dict)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _render_exception_and_stack,
        PIIRedactor(),  # after the exception text exists, before our own keys are added
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        UTCTimeStamper(),
        TraceContextAdder(),
    ]


def configure_logging(
    settings: Settings | None = None,
    *,
    stream: TextIO | None = None,
    colors: bool | None = None,
) -> None:
    """Configure structlog and the standard library for the whole process.

    Production (``settings.is_production``) writes one JSON object per line with the
    keys ``event``, ``level``, ``timestamp`` (ISO-8601 UTC, ``Z``), ``logger``,
    ``request_id``, ``trace_id``/``span_id`` when a span is active, and bound keys; any
    other environment writes coloured console lines. ``settings.log_level`` filters both
    structlog events and stdlib records. The root logger gets one handler; server
    loggers (uvicorn, gunicorn, hypercorn) lose theirs and propagate to it, so their
    lines are formatted and redacted the same way. Calling it again replaces the
    previous configuration instead of adding to it.

    Args:
        settings: defaults to `Settings.from_env()`.
        stream: where lines go; standard output (looked up at write time) by default.
        colors: console colours in development; by default only when `stream` is a tty.
    """
    if settings is None:
        settings = Settings.from_env()
    level = logging.getLevelName(settings.log_level)
    if not isinstance(level, int):
        level = logging.INFO

    sink = _Sink(stream, threading.RLock())
    renderer: Processor
    if settings.is_production:
        renderer = structlog.processors.JSONRenderer(serializer=json_dumps)
    else:
        if colors is None:
            target = stream if stream is not None else sys.stdout
            try:
                colors = bool(target.isatty())
            except Exception:
                colors = False
        renderer = structlog.dev.ConsoleRenderer(colors=colors)

    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        context_class=dict,
        # No caching: a reconfiguration (or structlog.testing.capture_logs) must reach
        # loggers that already logged; it costs about a microsecond per line.
        cache_logger_on_first_use=False,
    )

    handler = _RootHandler(sink)
    handler.setLevel(level)  # records propagated from server loggers skip root's level
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RootHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if not server_logger.handlers and not server_logger.propagate:
            # Switched off on purpose (``uvicorn --no-access-log``): keep it off.
            continue
        server_logger.handlers.clear()
        server_logger.propagate = True
        server_logger.setLevel(logging.NOTSET)
    _state.sink = sink


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; `name` (default: the caller's module) becomes the ``logger`` key."""
    if name is None:
        name = _caller_module(2)
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


def bind_request_id(request_id: str) -> None:
    """Bind `request_id` for every following log line in this context.

    `RequestIdMiddleware` does this (and undoes it) per request; call it yourself in
    background jobs or consumers that have their own notion of a request.
    """
    request_id_var.set(request_id)
    bind_contextvars(request_id=request_id)


def clear_context() -> None:
    """Drop every key bound into structlog's contextvars, and the request id."""
    clear_contextvars()
    request_id_var.set(None)
