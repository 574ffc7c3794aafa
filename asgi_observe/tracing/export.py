"""Export-time work for providers built by `setup_tracing`: redaction and outage reports.

`ExportGuard` wraps the OTLP exporter and runs in the batch processor's thread, off the
request path. It (1) redacts PII from spans of *other* instrumentations, and of code
that sets attributes directly, before they leave the process; (2) turns a failing
collector into one warning per outage on ``logging.getLogger("asgi_observe")``, the
exporter's own error and retry lines included, instead of lines per batch; and (3) can
be abandoned, so `shutdown_tracing` can stop waiting on an export to a collector that
black-holes connections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util import types

from asgi_observe.pii import REDACTED, is_sensitive_key
from asgi_observe.tracing.api import INSTRUMENTATION_NAME, redact_text, report_once

__all__ = ["ExportGuard", "redact_span"]

logger = logging.getLogger("asgi_observe")

# Attributes TracingMiddleware has already redacted (or that hold no free text): the
# export-time pass skips them on its own spans instead of scanning them twice.
_CLEAN_SERVER_KEYS = frozenset(
    {
        "http.request.method",
        "http.request.method_original",
        "http.response.status_code",
        "http.route",
        "url.path",
        "url.query",
        "url.scheme",
        "server.address",
        "server.port",
        "client.address",
        "user_agent.original",
        "request_id",
        "error.type",
    }
)

_NOTHING: frozenset[str] = frozenset()

# Loggers on which the OTLP exporters report failed batches and their retries
# ("Transient error ... retrying"). Records they emit from a guard's export are held
# back (see _Capture): the guard reports an outage once, with their reason.
_EXPORTER_LOGGER_PREFIX = "opentelemetry.exporter"
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
)


class _Capture(logging.Filter):
    """Holds back exporter log records emitted by a guard's export, in that thread only.

    A logger's filters see only the records logged on it, so the filter is installed on
    each exporter logger; other threads (an exporter used outside a guard) are untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held: list[logging.LogRecord] | None = getattr(self.local, "held", None)
        if held is None:
            return True
        held.append(record)
        return False


_capture = _Capture()


def _install_capture_filter() -> None:
    """On the known exporter loggers, and on every exporter logger already created (the
    exporter's modules are imported by the time a guard wraps one of its instances)."""
    names = set(_EXPORTER_LOGGERS)
    names.update(
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith(_EXPORTER_LOGGER_PREFIX)
    )
    for name in sorted(names):
        target = logging.getLogger(name)
        if _capture not in target.filters:
            target.addFilter(_capture)


def _reason(held: Sequence[logging.LogRecord]) -> str:
    """The exporter's last word on a failed export (its final error, else its last retry)."""
    for record in reversed(held):
        if record.levelno >= logging.WARNING:
            return record.getMessage()
    return ""


def _redact_attributes(
    attributes: types.Attributes, skip: frozenset[str]
) -> dict[str, types.AttributeValue] | None:
    """A redacted copy of `attributes`, or None when nothing needed redacting."""
    if not attributes:
        return None
    changed: dict[str, types.AttributeValue] | None = None
    for key, value in attributes.items():
        if key in skip:
            continue
        new: types.AttributeValue
        if is_sensitive_key(key):
            new = REDACTED
        elif isinstance(value, str):
            new = redact_text(value)
        elif isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
            new = [redact_text(item) if isinstance(item, str) else item for item in value]
            if list(value) == new:
                continue
        else:
            continue
        if new != value:
            if changed is None:
                changed = dict(attributes)
            changed[key] = new
    return changed


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """`span` with PII redacted from its name, attributes, events and status; copied only
    when something changed."""
    scope = span.instrumentation_scope
    ours = scope is not None and scope.name == INSTRUMENTATION_NAME
    attributes = _redact_attributes(span.attributes, _CLEAN_SERVER_KEYS if ours else _NOTHING)
    events: list[Event] | None = None
    for index, event in enumerate(span.events):
        event_attributes = _redact_attributes(event.attributes, _NOTHING)
        if event_attributes is not None:
            if events is None:
                events = list(span.events)
            events[index] = Event(event.name, event_attributes, event.timestamp)
    # Our span names are route templates and our status descriptions are redacted.
    name = span.name if ours else redact_text(span.name)
    status = span.status
    if status.description and not ours:
        description = redact_text(status.description)
        if description != status.description:
            status = Status(status.status_code, description)
    if attributes is None and events is None and name == span.name and status is span.status:
        return span
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes if attributes is None else attributes,
        events=span.events if events is None else events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=scope,
    )


class ExportGuard(SpanExporter):
    """Wraps an exporter: export-time redaction, outage reported once, abandonable.

    Runs in the batch processor's thread, so nothing here adds request latency.
    """

    def __init__(self, exporter: SpanExporter, *, target: str) -> None:
        self.exporter = exporter
        self.target = target
        self.failed_batches = 0
        self._failing = False
        self._abandoned = False
        self._shut = False
        self._lock = threading.Lock()
        _install_capture_filter()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._abandoned:
            return SpanExportResult.FAILURE
        failing = self._failing
        # The exporter logs every failed batch and every retry ("Transient error ...
        # retrying in 1s"): one outage would be dozens of warnings. Its records are held
        # back here; the first failure of an outage is reported once, with its reason.
        held: list[logging.LogRecord] = []
        _capture.local.held = held
        raised: Exception | None = None
        try:
            result = self.exporter.export([redact_span(span) for span in spans])
        except Exception as exc:
            raised = exc
            result = SpanExportResult.FAILURE
        finally:
            _capture.local.held = None
        for record in held:  # the exporter's own account, kept for debugging
            logger.debug("asgi_observe: span exporter: %s", record.getMessage())
        if result is SpanExportResult.SUCCESS:
            if failing:
                self._failing = False
                logger.info("asgi_observe: span export to %s recovered", self.target)
            return result
        self.failed_batches += 1
        if not failing and not self._abandoned:
            self._failing = True
            reason = f"{type(raised).__name__}: {raised}" if raised is not None else _reason(held)
            logger.warning(
                "asgi_observe: exporting spans to %s failed (%s); spans are dropped until "
                "the collector is reachable again (further failures are not logged)",
                self.target,
                reason or "no reason given",
                exc_info=raised,
            )
        return result

    def abandon(self) -> None:
        """Drop every further batch and interrupt the one in flight (shutdown timed out)."""
        self._abandoned = True
        self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        try:
            self.exporter.shutdown()
        except Exception:
            report_once("exporter-shutdown", "asgi_observe: the span exporter failed to shut down")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
