"""Structured logging: one configuration for structlog and the standard library.

This module owns `configure_logging`, `get_logger`, the request-context helpers
(`bind_request_id`, `clear_context`), the `TraceContextAdder` processor and the safe
JSON serializer. Production renders one JSON object per line; every other environment
renders readable console lines. Both structlog events and stdlib records (uvicorn,
third-party libraries, our own ``asgi_observe`` warnings) pass the same processors --
context merge, exception formatting, PII redaction, logger name, level, ISO-8601 UTC
timestamp, trace and span ids -- and end up on the same stream under one lock, so lines
never interleave. Lines logged in an event loop's thread are written once per loop
iteration, together (`_Sink`): a system call per line cost more than building it.

structlog events do not travel through `logging.LogRecord`s: they are rendered by
structlog and written directly, which is about three times cheaper per line than the
`ProcessorFormatter` round trip. stdlib records use `ProcessorFormatter` with the same
processors as its ``foreign_pre_chain``. The access log, written once per request, goes
one step further (`write_event`, `write_prepared_event`): while the production
configuration installed here is in force, it applies the same processing to its event
itself, without structlog's bound-logger machinery, redacting only the values it does not
already know to be clean, and writes the identical line for a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import sys
import threading
from asyncio import get_running_loop
from collections.abc import Collection
from types import FrameType
from typing import Any, TextIO

import orjson
import structlog
from structlog import get_config
from structlog.contextvars import (
    bind_contextvars,
    clear_contextvars,
    get_contextvars,
    merge_contextvars,
)
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from asgi_observe.logs.processors import (
    ORJSON_OPTIONS,
    StdlibQueryRedactor,
    TraceContextAdder,
    UTCTimeStamper,
    json_dumps,
)
from asgi_observe.pii import (
    PII_PATTERNS,
    PIIRedactor,
    redact_plain_values,
    redact_text,
    uses_default_patterns,
)
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


# A batch is written at once when it reaches this many characters, without waiting for
# the end of the loop iteration: it bounds memory and the size of a single write.
BATCH_LIMIT = 64 * 1024


class _Sink:
    """Where lines go: the stream and the lock shared with the stdlib root handler.

    Behind a real server the stream is a pipe or a file, and one ``write()`` system call
    per line (plus the flush that issues it) cost more server CPU than building the line.
    So lines logged from a thread running an event loop -- every request's lines --
    are buffered and written together, one write and one flush, once per loop
    iteration: the first line of a batch schedules the write with ``loop.call_soon``,
    which runs before the loop next waits for I/O. A batch that reaches `BATCH_LIMIT`
    characters is written at once.

    Everything else goes straight to the stream after what is buffered, so each
    thread's lines keep their order and lines never interleave: lines from other
    threads or with no running loop, stdlib records (`write_now`: uvicorn's own lines,
    errors, which must not wait), and streams without a file descriptor (an
    ``io.StringIO``: no system call to save, and tests read it right after logging).
    Nothing buffered is lost: the buffer is also written by `configure_logging` before
    it replaces this sink, by ``logging.shutdown`` (the root handler's ``flush``) and at
    interpreter exit (``atexit``); nothing is written twice: a forked child forgets
    what its parent buffered.
    """

    def __init__(self, stream: TextIO | None, lock: threading.RLock) -> None:
        self.stream = stream  # None: sys.stdout at write time (it can be replaced)
        # One lock for the buffer and the stream: other threads write the buffer out too.
        # In the loop's thread it is uncontended, a few tens of nanoseconds per line.
        self.lock = lock
        self.failed = False
        self._lines: list[str] = []
        self._size = 0
        self._target: TextIO | None = None  # the stream the buffered lines go to
        # The loop whose next iteration writes the buffer; None once it is written. A
        # line from any other loop schedules its own write, so a loop closed before its
        # callback ran cannot leave lines waiting.
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._probed: object = None  # the last stream asked for a file descriptor ...
        self._probed_has_fd = False  # ... and its answer

    def write(self, line: str) -> None:
        """Write `line` (without its newline): batched in a loop's thread, else at once."""
        stream = self.stream
        if stream is None:
            stream = sys.stdout
        try:
            loop: asyncio.AbstractEventLoop | None = get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:
            if loop is not None and loop is self._writer_loop and stream is self._target:
                # A batch for this stream is already waiting for this loop's write (a
                # writer loop is set only while lines are buffered): join it.
                self._lines.append(line)
                self._size += len(line)
                if self._size >= BATCH_LIMIT:
                    self._flush_locked()
                return
            # The stream's answer is kept: asked again only when the stream changes.
            has_fd = self._probed_has_fd if stream is self._probed else self._has_fd(stream)
            if loop is None or not has_fd:
                self._write_locked(stream, line)
                return
            if self._lines and self._target is not stream:
                self._flush_locked()  # sys.stdout was replaced: the old lines go to the old one
            self._target = stream
            self._lines.append(line)
            self._size += len(line)
            if self._size >= BATCH_LIMIT:
                self._flush_locked()
            elif self._writer_loop is not loop:
                self._writer_loop = loop
                try:
                    loop.call_soon(self.flush)
                except Exception:  # a loop that refuses callbacks: do not keep the line
                    self._flush_locked()

    def write_now(self, line: str) -> None:
        """Write what is buffered, then `line`, now: for records that must not wait."""
        stream = self.stream if self.stream is not None else sys.stdout
        with self.lock:
            self._write_locked(stream, line)

    def flush(self) -> None:
        """Write the buffered lines, if any (the scheduled callback, and at exit)."""
        with self.lock:
            self._flush_locked()

    def forget(self) -> None:
        """Drop the buffered lines unwritten (in a forked child: they are its parent's)."""
        self._lines, self._size, self._writer_loop = [], 0, None

    def _write_locked(self, stream: TextIO, line: str) -> None:
        if self._lines:
            self._flush_locked()
        try:
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self._report_failure()

    def _flush_locked(self) -> None:
        lines, target = self._lines, self._target
        self._lines, self._size, self._writer_loop = [], 0, None
        if not lines or target is None:
            return
        try:
            target.write("\n".join(lines) + "\n")  # one write and one flush per batch
            target.flush()
        except Exception:
            self._report_failure()  # the batch is dropped: the stream cannot take it

    def _has_fd(self, stream: TextIO) -> bool:
        """Whether `stream` writes to a file descriptor, so a line costs a system call."""
        if stream is not self._probed:
            try:
                stream.fileno()
            except Exception:  # io.StringIO, pytest's capsys, a closed file
                has_fd = False
            else:
                has_fd = True
            self._probed, self._probed_has_fd = stream, has_fd
        return self._probed_has_fd

    def _report_failure(self) -> None:
        # A closed pipe or a full disk must not raise into the request that logged.
        if not self.failed:
            self.failed = True
            with contextlib.suppress(Exception):  # nowhere left to report to
                sys.__stderr__.write("asgi_observe: writing a log line failed\n")  # type: ignore[union-attr]


class _Production:
    """The production pipeline a configure_logging call installed, kept to recognise it.

    `write_event` runs these processors itself only while structlog's configuration
    still holds exactly them (``structlog.testing.capture_logs`` swaps them in place; a
    plain ``structlog.configure`` replaces them), this wrapper class (the level filter)
    and our logger factory.
    """

    __slots__ = (
        "enabled",
        "head",
        "processors",
        "redactor",
        "renderer",
        "stamper",
        "tracer",
        "wrapper_class",
    )

    def __init__(
        self,
        processors: list[Processor],
        wrapper_class: Any,
        level: int,
        *,
        redactor: PIIRedactor,
        stamper: UTCTimeStamper,
        tracer: TraceContextAdder,
    ) -> None:
        self.processors = list(processors)  # a copy: the configured list can be edited
        self.head = tuple(processors[:-1])  # everything before the JSON renderer
        self.renderer = processors[-1]
        self.redactor = redactor
        self.stamper = stamper
        self.tracer = tracer
        self.wrapper_class = wrapper_class
        # What make_filtering_bound_logger(level) keeps: methods at or above the level.
        self.enabled = frozenset(name for name, value in _METHOD_LEVELS.items() if value >= level)


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _State:
    """The current sink and production pipeline, replaced by each configure_logging call."""

    sink = _Sink(None, threading.RLock())
    production: _Production | None = None


_state = _State()


def _flush_at_exit() -> None:
    """Write the lines still buffered when the interpreter exits."""
    _state.sink.flush()


atexit.register(_flush_at_exit)


def _forget_in_child() -> None:
    """A forked child drops the lines its parent buffered: the parent writes them."""
    _state.sink.forget()


os.register_at_fork(after_in_child=_forget_in_child)


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


def _is_console(handler: logging.Handler) -> bool:
    """A plain console handler on the root, as ``logging.basicConfig()`` installs one.

    Servers that call ``basicConfig`` before importing the app (daphne does) would
    otherwise print every record a second time, in their own plain format, beside the
    root handler's lines. Subclasses (pytest's capture handlers, file handlers) and
    handlers writing anywhere else are left alone.
    """
    if type(handler) is not logging.StreamHandler:
        return False
    stream = handler.stream
    return stream is not None and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


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
        # Written at once, after the batch: a server's own lines and errors must not
        # wait for the end of the loop iteration (or be lost with it).
        self._sink.write_now(line)

    def flush(self) -> None:
        """Write the sink's buffered lines: ``logging.shutdown`` calls this at exit."""
        self._sink.flush()


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


def _shared_processors(
    redactor: PIIRedactor, stamper: UTCTimeStamper, tracer: TraceContextAdder
) -> list[Processor]:
    # `_process_plain` applies this chain inline: keep the two in step.
    return [
        structlog.contextvars.merge_contextvars,
        _render_exception_and_stack,
        redactor,  # after the exception text exists, before our own keys are added
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        stamper,
        tracer,
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
    structlog events and stdlib records. The root logger gets one handler, replacing a
    plain console handler already there (``logging.basicConfig``'s, which daphne
    installs before it imports the app); server
    loggers (uvicorn, gunicorn, hypercorn) lose theirs and propagate to it, so their
    lines are formatted and redacted the same way; the queries of request targets and
    URLs in stdlib messages (uvicorn's ``"GET /cb?code=... HTTP/1.1"``) are redacted as
    the library's own access log redacts them (`StdlibQueryRedactor`). Calling it again replaces the
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

    redactor, stamper, tracer = PIIRedactor(), UTCTimeStamper(), TraceContextAdder()
    shared = _shared_processors(redactor, stamper, tracer)
    processors = [*shared, renderer]
    wrapper_class = structlog.make_filtering_bound_logger(level)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
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
            # stdlib records first lose the secrets of the URLs in their message, which
            # needs the record's arguments (uvicorn's path is one of them).
            foreign_pre_chain=[StdlibQueryRedactor(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            pass_foreign_args=True,
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RootHandler) or _is_console(h)]:
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
    _state.sink.flush()  # lines buffered for the old stream go there, before any new line
    _state.sink = sink
    _state.production = (
        _Production(
            processors, wrapper_class, level, redactor=redactor, stamper=stamper, tracer=tracer
        )
        if settings.is_production
        else None
    )


def write_event(
    name: str, method_name: str, event: str, fields: dict[str, Any], *, plain_keys: bool = False
) -> bool:
    """Log `event` with `fields` as ``get_logger(name).<method_name>(event, **fields)``
    would, cheaper; or do nothing and return False when that cannot be guaranteed.

    It applies while the production configuration of the last `configure_logging` call
    is in force, and produces the same line: the same processors (context merge,
    exception rendering, redaction, logger name, level, timestamp, trace ids) are
    applied to the same event dict in the same order, the JSON is encoded with the
    renderer's settings and the line goes to the same sink. What is skipped is
    structlog's bound-logger machinery (binding a logger, copying its context, the
    keyword-argument round trip); with
    `plain_keys` (the caller vouches that no key of `fields` is sensitive or a
    ProcessorFormatter internal, so their values are redacted without looking the keys
    up) the processors are applied inline.

    Under any other configuration (development console, ``capture_logs``, a direct
    ``structlog.configure``) it returns False and leaves `fields` untouched: use the
    logger then. `fields` becomes the event dict (it is changed in place). Exceptions of
    the processors propagate, as they would from the logger.
    """
    production = _production_for(method_name)
    if isinstance(production, bool):
        return production
    logger = _loggers.get(name) or _logger_factory(name)
    event_dict: Any = None
    if plain_keys:
        event_dict = _process_plain(production, logger, method_name, event, fields)
    if event_dict is None:
        _write_processed(production, logger, method_name, event, fields)
        return True
    _state.sink.write(str(production.renderer(logger, method_name, event_dict)))
    return True


def _production_for(method_name: str) -> _Production | bool:
    """The production pipeline in force, for an event logged with `method_name`; else
    what `write_event` and `write_prepared_event` return: False when it is not in force
    (use the logger), True when the level drops the event, as the configured wrapper
    class would (aliases, ``warn``, ``exception``..., are left to the logger: False)."""
    production = _state.production
    if production is None:
        return False
    # Whether structlog's configuration still holds exactly what `production` installed.
    # Asked per line: ``structlog.configure``, ``reset_defaults`` or ``capture_logs``
    # can come at any time, and ``get_config`` is structlog's only public view of it.
    config = get_config()
    if not (
        config["processors"] == production.processors
        and config["wrapper_class"] is production.wrapper_class
        and config["logger_factory"] is _logger_factory
        and config["context_class"] is dict
    ):
        return False
    if method_name not in production.enabled:
        return method_name in _METHOD_LEVELS
    return production


def _write_processed(
    production: _Production,
    logger: StreamLogger,
    method_name: str,
    event: str,
    fields: dict[str, Any],
) -> None:
    """The general case: every processor of the chain, one after the other, then the line."""
    fields["event"] = event
    event_dict: Any = fields
    try:
        for processor in production.head:
            event_dict = processor(logger, method_name, event_dict)
    except structlog.DropEvent:
        return
    _state.sink.write(str(production.renderer(logger, method_name, event_dict)))


def write_prepared_event(
    name: str,
    method_name: str,
    event: str,
    fields: dict[str, Any],
    unchecked: Collection[str],
) -> bool:
    """`write_event` for a caller that vouches for the redaction of its own values:
    the same line, for less (the access log's route).

    The caller vouches that no key of `fields` is sensitive or a ProcessorFormatter
    internal and, while `asgi_observe.pii.uses_default_patterns` holds, that `event` and
    every value except those under the keys in `unchecked` are already what `PIIRedactor`
    would make of them: ints, finite floats, None, or strings `redact_text` returns
    unchanged. The values under `unchecked` must be strings or None; they are redacted
    here. Under patterns other than the defaults every value is redacted, as
    `write_event` redacts it.

    Bound keys are merged after ``event`` and redacted exactly as the chain does; with
    ``exc_info``, ``stack_info`` or a ProcessorFormatter internal bound, the whole chain
    runs. The line is encoded with orjson and the renderer's options directly; what needs
    the renderer's fallback (an object orjson does not know, a 65-bit integer) or gives
    non-ASCII text is left to the renderer itself, so the line is byte for byte the
    renderer's. Returns False, with `fields` untouched, under any configuration other
    than `configure_logging`'s production one; `fields` becomes the event dict.
    """
    production = _production_for(method_name)
    if isinstance(production, bool):
        return production
    logger = _loggers.get(name) or _logger_factory(name)
    fields["event"] = event
    own = len(fields)
    # The chain's first processor, in place: bound keys the event lacks come last.
    merge_contextvars(logger, method_name, fields)
    bound: dict[str, Any] | None = None
    if len(fields) > own:
        bound = dict(itertools.islice(fields.items(), own, None))
        if not _SPECIAL_KEYS.isdisjoint(bound):
            _write_processed(production, logger, method_name, event, fields)
            return True
    if uses_default_patterns():
        for key in unchecked:
            value = fields[key]
            if value is not None:
                fields[key] = redact_text(value)
    else:
        redact_plain_values(fields)
    if bound:
        fields.update(production.redactor(logger, method_name, bound))
    event_dict = _add_own_keys(production, logger, method_name, fields)
    try:
        encoded = orjson.dumps(event_dict, option=ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError, OverflowError):
        encoded = None  # the renderer's fallback renders it
    if encoded is not None and encoded.isascii():
        _state.sink.write(encoded.decode("ascii"))
    else:
        _state.sink.write(str(production.renderer(logger, method_name, event_dict)))
    return True


def _add_own_keys(
    production: _Production, logger: StreamLogger, method_name: str, fields: EventDict
) -> EventDict:
    """The chain's last steps, inline: ``logger`` and ``level`` (our method names are
    their own level names), the timestamp, and trace ids only when ``span_id`` is absent."""
    fields["logger"] = logger.name
    fields["level"] = method_name
    event_dict = production.stamper(logger, method_name, fields)
    if "span_id" not in event_dict:
        event_dict = production.tracer(logger, method_name, event_dict)
    return event_dict


# Bound keys that make a processor other than redaction act: left to the general path.
_SPECIAL_KEYS = frozenset({"exc_info", "stack_info", "_record", "_from_structlog"})


def _process_plain(
    production: _Production,
    logger: StreamLogger,
    method_name: str,
    event: str,
    fields: dict[str, Any],
) -> EventDict | None:
    """The processors of `production.head` applied inline to an event whose own keys
    are plain; None (and `fields` untouched) when a bound key needs the general path.

    Step by step what the chain does: ``merge_contextvars`` adds the bound keys missing
    from the event (after ``event``, in the context's order); nothing to format without
    ``exc_info``/``stack_info``; `PIIRedactor` redacts each value, which for plain keys
    needs no key lookup; then `_add_own_keys`.
    """
    bound: dict[str, Any] | None = None
    context = get_contextvars()
    if context:
        bound = {key: value for key, value in context.items() if key not in fields}
        bound.pop("event", None)
    if bound is not None and not _SPECIAL_KEYS.isdisjoint(bound):
        return None
    fields["event"] = event
    redact_plain_values(fields)
    if bound is not None:
        fields.update(production.redactor(logger, method_name, bound))
    return _add_own_keys(production, logger, method_name, fields)


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
