"""The manual-tracing surface: `tracer`, `add_span_attributes`, `record_exception`."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asgi_observe import pii, tracing
from asgi_observe.tracing import add_span_attributes, record_exception, tracer
from asgi_observe.tracing import api as tracing_api
from asgi_observe.tracing.api import TRACER_CONTEXT_KEY


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_add_span_attributes_redacts_and_coerces(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing of ann@example.com"

    with provider.get_tracer("t").start_as_current_span("work"):
        add_span_attributes(
            user_id="123",
            action="purchase",
            contact="ann@example.com",
            api_key="abcdef123456",
            password=12345,
            tags=["a", "ann@example.com"],
            sizes=[1, 2, 3],
            ratio=0.5,
            flag=True,
            missing=None,
            thing=Thing(),
            payload={"token": "xyz", "note": "hi"},
        )
    attributes = dict(finished(exporter, "work").attributes or {})
    assert attributes["user_id"] == "123"
    assert attributes["action"] == "purchase"
    assert attributes["contact"] == "[REDACTED_EMAIL]"
    assert attributes["api_key"] == "[REDACTED]"
    assert attributes["password"] == "[REDACTED]"
    assert attributes["tags"] == ("a", "[REDACTED_EMAIL]")
    assert attributes["sizes"] == (1, 2, 3)
    assert attributes["ratio"] == 0.5
    assert attributes["flag"] is True
    assert "missing" not in attributes
    assert attributes["thing"] == "thing of [REDACTED_EMAIL]"
    assert "xyz" not in str(attributes["payload"])
    assert "hi" in str(attributes["payload"])


def test_helpers_are_no_ops_outside_a_span() -> None:
    assert not trace.get_current_span().is_recording()
    add_span_attributes(a="b")
    record_exception(ValueError("x"))


def test_helpers_are_no_ops_on_an_unsampled_span(exporter: InMemorySpanExporter) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("dropped"):
        add_span_attributes(a="b")
        record_exception(ValueError("x"))
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_record_exception_marks_the_current_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("t").start_as_current_span("risky"):
        try:
            raise KeyError("no record for ann@example.com")
        except KeyError as exc:
            record_exception(exc)
    span = finished(exporter, "risky")
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "KeyError"
    [event] = span.events
    attributes = dict(event.attributes or {})
    assert event.name == "exception"
    assert attributes["exception.type"] == "KeyError"
    assert "ann@example.com" not in str(attributes["exception.message"])
    assert "[REDACTED_EMAIL]" in str(attributes["exception.message"])
    assert "ann@example.com" not in str(attributes["exception.stacktrace"])
    assert attributes["exception.escaped"] == "False"


def test_record_exception_uses_the_qualified_name_of_non_builtin_types(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class PaymentError(Exception):
        pass

    with provider.get_tracer("t").start_as_current_span("pay"):
        record_exception(PaymentError("declined"))
    error_type = dict(finished(exporter, "pay").attributes or {})["error.type"]
    assert error_type == f"{__name__}.{PaymentError.__qualname__}"


def test_tracer_follows_the_provider_published_in_the_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    token = otel_context.attach(
        otel_context.set_value(TRACER_CONTEXT_KEY, provider.get_tracer("asgi_observe"))
    )
    try:
        with tracer.start_as_current_span("manual") as span:
            assert span.is_recording()
            with tracer.start_as_current_span("nested"):
                pass
        started = tracer.start_span("explicit")
        started.end()
    finally:
        otel_context.detach(token)
    manual = finished(exporter, "manual")
    nested = finished(exporter, "nested")
    assert manual.context is not None
    assert nested.parent is not None
    assert nested.parent.span_id == manual.context.span_id
    assert finished(exporter, "explicit").name == "explicit"


def test_tracer_works_as_a_decorator(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    @tracer.start_as_current_span("decorated")
    def work() -> int:
        return 7

    token = otel_context.attach(
        otel_context.set_value(TRACER_CONTEXT_KEY, provider.get_tracer("asgi_observe"))
    )
    try:
        assert work() == 7
    finally:
        otel_context.detach(token)
    assert finished(exporter, "decorated").name == "decorated"


async def test_tracer_decorates_coroutines_and_resolves_the_provider_per_call(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    @tracer.start_as_current_span("async-work")
    async def work(value: int) -> int:
        trace.get_current_span().set_attribute("value", value)
        return value * 2

    assert await work(1) == 2  # no request provider yet: the global (no-op) one
    assert exporter.get_finished_spans() == ()
    token = otel_context.attach(
        otel_context.set_value(TRACER_CONTEXT_KEY, provider.get_tracer("asgi_observe"))
    )
    try:
        assert await work(21) == 42
    finally:
        otel_context.detach(token)
    span = finished(exporter, "async-work")
    assert span.attributes is not None
    assert span.attributes["value"] == 21


def test_tracer_without_any_provider_is_harmless() -> None:
    with tracer.start_as_current_span("nothing") as span:
        span.set_attribute("a", 1)
    assert isinstance(span, trace.Span)


def test_public_names_of_the_tracing_module() -> None:
    for name in ("setup_tracing", "tracer", "add_span_attributes", "record_exception"):
        assert name in tracing.__all__
        assert getattr(tracing, name) is not None
    assert tracing.__all__ == sorted(tracing.__all__)


def test_record_exception_survives_an_unprintable_exception(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with provider.get_tracer("t").start_as_current_span("odd"):
        record_exception(UnprintableError())
    span = finished(exporter, "odd")
    assert span.status.status_code is StatusCode.ERROR
    assert "unprintable" in str(dict(span.events[0].attributes or {})["exception.message"])


def test_span_query_redaction_is_the_shared_one_and_fails_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query = "sig=abcdef&code=4/0AX4XfWj&n=1"
    assert tracing_api.redact_query(query) == pii.redact_query(query)
    assert tracing_api.redact_query(query) == "sig=[REDACTED]&code=[REDACTED]&n=1"

    def broken(query: str) -> str:
        raise RuntimeError("redactor broke")

    monkeypatch.setattr(pii, "redact_query", broken)
    assert tracing_api.redact_query(query) == "[REDACTION_FAILED]"
