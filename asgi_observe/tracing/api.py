"""The manual-tracing surface: `tracer`, `add_span_attributes`, `record_exception`.

It also owns the PII policy for span data written by our own code: every string that
becomes a span or event attribute goes through `asgi_observe.pii.redact` here, at the
moment it is set, so spans are PII-safe whichever `TracerProvider` records them (a
provider built by `setup_tracing` additionally redacts spans of other instrumentations
at export time, see `asgi_observe.tracing.setup`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util import types

from asgi_observe import pii

__all__ = [
    "APP_TRACER_NAME",
    "INSTRUMENTATION_NAME",
    "TRACER_CONTEXT_KEY",
    "add_span_attributes",
    "clean_attribute",
    "exception_type_name",
    "record_exception",
    "record_exception_on",
    "redact_query",
    "redact_text",
    "tracer",
]

logger = logging.getLogger("asgi_observe")

P = ParamSpec("P")
R = TypeVar("R")

INSTRUMENTATION_NAME = "asgi_observe"
"""Instrumentation scope of the server spans `TracingMiddleware` makes."""

APP_TRACER_NAME = "asgi_observe.app"
"""Instrumentation scope of spans made through `tracer`: the application's own code,
kept apart from the server spans so export-time redaction treats them as untrusted."""

TRACER_CONTEXT_KEY = otel_context.create_key("asgi_observe.tracer")
"""Context key under which `TracingMiddleware` publishes the tracer of its provider.

`tracer` looks here first, so manual spans inside a request land in the same provider as
the request's server span even when that provider is not the global one (an injected
provider in `instrument(tracer_provider=...)`, or a private one in tests).
"""

_REDACTION_FAILED = "[REDACTION_FAILED]"
_reported: set[str] = set()


def report_once(key: str, message: str, *args: object, exc_info: bool = True) -> None:
    """Log one of our own failures (or misconfigurations) once per process; with the
    traceback of the exception being handled, unless `exc_info` is false."""
    if key in _reported:
        return
    _reported.add(key)
    logger.warning(message, *args, exc_info=exc_info)


def redact_text(value: str) -> str:
    """`redact()` for a string bound for a span; a failing redactor hides the value."""
    try:
        return pii.redact_text(value)
    except Exception:
        report_once("redact", "asgi_observe: redacting a span attribute failed; value hidden")
        return _REDACTION_FAILED


def redact_query(query: str) -> str:
    """`asgi_observe.pii.redact_query` for a span's ``url.query``: the same text as the
    access log's ``path`` shows; a failing redactor hides the query."""
    try:
        return pii.redact_query(query)
    except Exception:
        report_once("redact", "asgi_observe: redacting a span attribute failed; value hidden")
        return _REDACTION_FAILED


def clean_attribute(key: str, value: object) -> types.AttributeValue | None:
    """Coerce a user value to an OpenTelemetry attribute value, redacting every string.

    Values under a sensitive key (``password``, ``api_key``, ``*_token``, see
    `asgi_observe.pii.SENSITIVE_KEYS`) become ``[REDACTED]`` whatever they are. Strings,
    bools, ints and floats pass (strings redacted); homogeneous sequences of them become
    lists; None is dropped; anything else is recorded as the ``str()`` of its redacted
    form rather than silently discarded by the SDK.
    """
    if value is None:
        return None
    if pii.is_sensitive_key(key):
        return pii.REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, str) for item in value):
            return [redact_text(item) for item in value]
        for kind in (bool, int, float):
            if all(type(item) is kind for item in value):
                return list(value)
    try:
        return str(pii.redact(value))
    except Exception:
        report_once("redact", "asgi_observe: redacting a span attribute failed; value hidden")
        return _REDACTION_FAILED


def exception_type_name(exc: BaseException) -> str:
    """The fully qualified class name the semantic conventions ask for in ``error.type``."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def record_exception_on(span: Span, exc: BaseException, *, escaped: bool = False) -> None:
    """Add a redacted ``exception`` event, ``error.type`` and an ERROR status to `span`.

    `Span.record_exception` would put the raw message and stack trace (which ends with
    the message) on the event; both may hold PII, so the event is built here instead.
    """
    type_name = exception_type_name(exc)
    try:
        message = redact_text(str(exc))
        stacktrace = redact_text(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
    except Exception:  # an exception whose __str__ raises must not raise here too
        message = f"<unprintable {type(exc).__qualname__}>"
        stacktrace = message
    span.add_event(
        "exception",
        {
            "exception.type": type_name,
            "exception.message": message,
            "exception.stacktrace": stacktrace,
            "exception.escaped": str(escaped),
        },
    )
    span.set_attribute("error.type", type_name)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


def add_span_attributes(**attributes: Any) -> None:
    """Set attributes on the current span, each string passed through `redact()`.

    Values under sensitive keys (``password=...``, ``api_key=...``) become
    ``[REDACTED]``. A no-op outside a span or on an unsampled one (nothing is built then). Values that
    are not valid attribute types are recorded as their redacted ``str()``.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    cleaned: dict[str, types.AttributeValue] = {}
    for key, value in attributes.items():
        item = clean_attribute(key, value)
        if item is not None:
            cleaned[key] = item
    if cleaned:
        span.set_attributes(cleaned)


def record_exception(exc: BaseException) -> None:
    """Record `exc` on the current span: a redacted exception event, ``error.type``, ERROR.

    Meant for exceptions the code handles (``except Exception as e: record_exception(e)``);
    exceptions escaping a request are recorded by `TracingMiddleware` itself.
    """
    span = trace.get_current_span()
    if span.is_recording():
        record_exception_on(span, exc)


class _CurrentTracer(trace.Tracer):
    """A `Tracer` that resolves its provider at each call, never at import.

    Inside a request traced by `TracingMiddleware` it uses that middleware's provider;
    elsewhere the global provider, whenever it is installed (so `setup_tracing` may run
    after modules did ``from asgi_observe import tracer``).
    """

    def __init__(self) -> None:
        # The API's proxy tracer follows the global provider once one is installed.
        self._global = trace.get_tracer(APP_TRACER_NAME)

    def _current(self) -> trace.Tracer:
        found = otel_context.get_value(TRACER_CONTEXT_KEY)
        return found if isinstance(found, trace.Tracer) else self._global

    def start_span(  # noqa: PLR0917 - the signature of opentelemetry's Tracer API
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self._current().start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    def start_as_current_span(  # type: ignore[override]  # noqa: PLR0917
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> CurrentSpanScope:
        # The API types its result with a private class; ours has the same two uses
        # (``with`` and decorator), hence the ignore. The signature is the API's.
        return CurrentSpanScope(
            lambda: self._current().start_as_current_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
                end_on_exit,
            )
        )


class CurrentSpanScope:
    """What ``tracer.start_as_current_span(...)`` returns: a context manager yielding the
    span, and a decorator for plain and ``async def`` functions.

    The tracer is resolved on each entry (each call of a decorated function), not when
    the scope is made: a function decorated at import time still records into the
    provider of the request it runs in.
    """

    def __init__(self, open_span: Callable[[], AbstractContextManager[Span]]) -> None:
        self._open = open_span
        self._entered: list[AbstractContextManager[Span]] = []

    def __enter__(self) -> Span:
        manager = self._open()
        span = manager.__enter__()
        self._entered.append(manager)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._entered.pop().__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def traced_coroutine(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self._open():
                    return await func(*args, **kwargs)

            return cast("Callable[P, R]", traced_coroutine)

        @functools.wraps(func)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._open():
                return func(*args, **kwargs)

        return traced


tracer: trace.Tracer = _CurrentTracer()
"""Use as ``with tracer.start_as_current_span("work") as span: ...`` anywhere."""
