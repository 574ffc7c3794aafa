"""setup_tracing / shutdown_tracing: resource, sampler, exporter choice, guard, bounds."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from asgi_observe.settings import Settings
from asgi_observe.tracing import (
    build_exporter,
    build_resource,
    build_sampler,
    setup_tracing,
    shutdown_tracing,
)
from asgi_observe.tracing.export import ExportGuard, redact_span
from tests.support import black_hole


def test_resource_from_settings() -> None:
    settings = Settings(
        service_name="baliblissed-backend",
        service_version="1.0.0",
        environment="production",
        resource_attributes=(("team", "core"), ("service.name", "ignored")),
    )
    attributes = dict(build_resource(settings).attributes)
    assert attributes["service.name"] == "baliblissed-backend"  # OTEL_SERVICE_NAME wins
    assert attributes["service.version"] == "1.0.0"
    assert attributes["deployment.environment"] == "production"
    assert attributes["deployment.environment.name"] == "production"
    assert attributes["team"] == "core"
    assert attributes["telemetry.sdk.language"] == "python"


def test_resource_service_name_from_resource_attributes_beats_the_default() -> None:
    settings = Settings(resource_attributes=(("service.name", "from-attributes"),))
    assert build_resource(settings).attributes["service.name"] == "from-attributes"
    assert build_resource(Settings()).attributes["service.name"] == "asgi-service"
    assert "service.version" not in build_resource(Settings()).attributes


def test_resource_merges_the_environment_as_specified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=web-1,team=env")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "otel,process,host")
    attributes = build_resource(
        Settings(service_name="explicit", resource_attributes=(("team", "core"),))
    ).attributes
    assert attributes["service.name"] == "explicit"  # the settings' values win...
    assert attributes["team"] == "core"
    assert attributes["k8s.pod.name"] == "web-1"  # ...and the environment is merged
    assert attributes["process.pid"] == os.getpid()  # detectors ran
    assert attributes["host.name"]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1.0])
def test_sampler_is_parent_based_ratio(ratio: float) -> None:
    description = build_sampler(Settings(sampler_ratio=ratio)).get_description()
    assert description.startswith("ParentBased{root:TraceIdRatioBased{")
    assert f"{{{ratio}}}" in description


def test_no_endpoint_no_exporter_but_spans_still_have_ids() -> None:
    assert build_exporter(Settings()) is None
    provider = setup_tracing(Settings(), set_global=False)
    with provider.get_tracer("t").start_as_current_span("local") as span:
        context = span.get_span_context()
        assert span.is_recording()
        assert context.is_valid
        assert trace.get_current_span() is span
    assert shutdown_tracing(provider) is True


def test_exporter_follows_the_protocol_and_explicit_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment says otherwise: the settings values are what counts.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://elsewhere:2/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "99000")
    grpc_exporter = build_exporter(
        Settings(otlp_endpoint="http://collector:4317", otlp_timeout=2.5)
    )
    assert isinstance(grpc_exporter, GRPCSpanExporter)
    assert grpc_exporter._endpoint == "collector:4317"
    assert grpc_exporter._timeout == 2.5
    grpc_exporter.shutdown()

    http_exporter = build_exporter(
        Settings(otlp_endpoint="http://collector:4318/", otlp_protocol="http/protobuf")
    )
    assert isinstance(http_exporter, HTTPSpanExporter)
    assert http_exporter._endpoint == "http://collector:4318/v1/traces"
    http_exporter.shutdown()  # type: ignore[no-untyped-call]

    # The generic endpoint is a base URL, even one that already ends in /v1/traces...
    generic = build_exporter(
        Settings(otlp_endpoint="http://collector:4318/v1/traces", otlp_protocol="http/protobuf")
    )
    assert isinstance(generic, HTTPSpanExporter)
    assert generic._endpoint == "http://collector:4318/v1/traces/v1/traces"
    generic.shutdown()  # type: ignore[no-untyped-call]
    # ...while the signal-specific one is used exactly as given.
    specific = build_exporter(
        Settings(
            otlp_endpoint="http://collector:4318",
            otlp_traces_endpoint="https://c/custom/traces",
            otlp_protocol="http/protobuf",
        )
    )
    assert isinstance(specific, HTTPSpanExporter)
    assert specific._endpoint == "https://c/custom/traces"
    specific.shutdown()  # type: ignore[no-untyped-call]


def test_each_call_builds_its_own_provider() -> None:
    first = setup_tracing(Settings(service_name="a"), set_global=False)
    second = setup_tracing(Settings(service_name="b", sampler_ratio=0.0), set_global=False)
    assert first is not second
    assert first.resource.attributes["service.name"] == "a"
    assert second.resource.attributes["service.name"] == "b"
    assert not second.get_tracer("t").start_span("dropped").is_recording()
    assert trace.get_tracer_provider() is not first
    for provider in (first, second):
        shutdown_tracing(provider)


def test_first_call_installs_the_global_provider_and_tracer_follows_lazily() -> None:
    """Run in a fresh interpreter: OpenTelemetry allows one global provider per process."""
    script = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from asgi_observe.settings import Settings
        from asgi_observe.tracing import TracingMiddleware, setup_tracing, shutdown_tracing, tracer

        seen = []

        async def app(scope, receive, send):
            seen.append(trace.get_current_span().is_recording())
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = TracingMiddleware(app)  # built before any provider exists
        with tracer.start_as_current_span("early") as span:
            assert not span.is_recording()
        first = setup_tracing(Settings(service_name="first"))
        second = setup_tracing(Settings(service_name="second"))
        assert trace.get_tracer_provider() is first
        assert second is not first
        with tracer.start_as_current_span("late") as span:
            assert span.is_recording()

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        asyncio.run(middleware(scope, receive, send))
        assert seen == [True]
        assert shutdown_tracing(first) and shutdown_tracing(second)
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_shutdown_is_bounded_on_a_black_hole(caplog: pytest.LogCaptureFixture) -> None:
    with black_hole() as port:
        provider = setup_tracing(
            Settings(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_timeout=30.0),
            set_global=False,
        )
        tracer = provider.get_tracer("t")
        for index in range(20):
            tracer.start_span(f"s{index}").end()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="asgi_observe"):
            flushed = shutdown_tracing(provider, timeout=1.0)
        elapsed = time.monotonic() - started
    assert flushed is False
    assert elapsed < 3.0  # the 30 s export timeout did not hold shutdown up
    assert any("did not finish" in r.getMessage() for r in caplog.records)


def test_shutdown_tolerates_providers_without_shutdown() -> None:
    assert shutdown_tracing(trace.NoOpTracerProvider()) is True
    assert shutdown_tracing(object()) is True


class FlakyExporter(SpanExporter):
    """Fails while `down` is set, logging each failure as the OTLP exporters do."""

    def __init__(self) -> None:
        self.down = True
        self.failures = 0
        self.batches: list[Sequence[ReadableSpan]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.down:
            self.failures += 1
            # A distinct text each time: the SDK's DuplicateFilter on this logger drops
            # repeats of one message template by itself.
            logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").error(
                f"Failed to export traces (attempt {self.failures}), error code: UNAVAILABLE"
            )
            return SpanExportResult.FAILURE
        self.batches.append(spans)
        return SpanExportResult.SUCCESS


def test_outage_reported_once_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    inner = FlakyExporter()
    guard = ExportGuard(inner, target="collector:4317 (grpc)")
    span = _span("s")
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            assert guard.export([span]) is SpanExportResult.FAILURE
        inner.down = False
        assert guard.export([span]) is SpanExportResult.SUCCESS
        inner.down = True
        assert guard.export([span]) is SpanExportResult.FAILURE
    ours = [r for r in caplog.records if r.name == "asgi_observe"]
    theirs = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "collector:4317" in ours[0].getMessage()
    # One warning per outage: the exporter's own lines are held back, and the first
    # failure's reason is carried by ours.
    assert theirs == []
    assert "(attempt 1)" in ours[0].getMessage()
    assert "(attempt 6)" in ours[2].getMessage()
    assert guard.failed_batches == 6


def test_raising_exporter_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    class Raising(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise ConnectionError("boom")

    guard = ExportGuard(Raising(), target="x")
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        for _ in range(3):
            assert guard.export([_span("s")]) is SpanExportResult.FAILURE
    [warning] = [r for r in caplog.records if r.name == "asgi_observe"]  # one per outage
    assert "ConnectionError: boom" in warning.getMessage()
    assert warning.exc_info is not None


def _span(
    name: str,
    *,
    scope: str = "some.library",
    attributes: dict[str, object] | None = None,
    status: Status | None = None,
) -> ReadableSpan:
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer(scope).start_span(name, attributes=attributes)  # type: ignore[arg-type]
    span.add_event("note", {"text": "mail ann@example.com", "n": 1})
    if status is not None:
        span.set_status(status)
    span.end()
    [finished] = exporter.get_finished_spans()
    return finished


def test_export_time_redaction_of_other_instrumentations() -> None:
    span = _span(
        "GET /users/ann@example.com",
        attributes={
            "db.statement": "select * from users where email = 'ann@example.com'",
            "http.request.header.authorization": "Bearer abcdefghijkl",
            "tags": ("ok", "ann@example.com"),
            "count": 3,
        },
        status=Status(StatusCode.ERROR, "lookup of ann@example.com failed"),
    )
    clean = redact_span(span)
    attributes = dict(clean.attributes or {})
    assert clean.name == "GET /users/[REDACTED_EMAIL]"
    assert "ann@example.com" not in str(attributes["db.statement"])
    assert attributes["http.request.header.authorization"] == "[REDACTED]"
    assert attributes["tags"] == ["ok", "[REDACTED_EMAIL]"]
    assert attributes["count"] == 3
    assert clean.status.description == "lookup of [REDACTED_EMAIL] failed"
    assert dict(clean.events[0].attributes or {}) == {"text": "mail [REDACTED_EMAIL]", "n": 1}
    assert clean.context == span.context
    assert clean.parent == span.parent
    assert clean.resource is span.resource


def test_export_time_redaction_trusts_only_the_server_spans() -> None:
    secret = "ann@example.com"
    server = _span("GET /items/{id}", scope="asgi_observe", attributes={"url.path": "/x"})
    manual = _span(f"lookup {secret}", scope="asgi_observe.app", attributes={"url.path": secret})
    assert redact_span(server).name == "GET /items/{id}"
    assert redact_span(manual).name == "lookup [REDACTED_EMAIL]"
    assert dict(redact_span(manual).attributes or {})["url.path"] == "[REDACTED_EMAIL]"


def test_export_time_redaction_copies_nothing_when_clean() -> None:
    span = _span("work", attributes={"a": "plain"})
    span_without_events = ReadableSpan(
        name=span.name,
        context=span.context,
        attributes=span.attributes,
        resource=span.resource,
        instrumentation_scope=span.instrumentation_scope,
    )
    assert redact_span(span_without_events) is span_without_events


def test_export_time_redaction_passes_through_a_real_exporter() -> None:
    inner = InMemorySpanExporter()
    guard = ExportGuard(inner, target="memory")
    assert guard.export([_span("x", attributes={"who": "ann@example.com"})]) is (
        SpanExportResult.SUCCESS
    )
    [exported] = inner.get_finished_spans()
    assert dict(exported.attributes or {})["who"] == "[REDACTED_EMAIL]"
    guard.shutdown()
    guard.shutdown()  # idempotent
