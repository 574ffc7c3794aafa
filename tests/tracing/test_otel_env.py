"""OpenTelemetry's environment variables behave as the specification defines them.

Each case sets the real process environment, builds the pipeline the way a service does
(`Settings.from_env()` then `setup_tracing`), and checks what a real OTLP receiver got
over the wire: the URL path, headers, compression, TLS, resource, and which spans were
sampled.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument, setup_tracing, shutdown_tracing
from asgi_observe.tracing import build_exporter
from tests.support import black_hole
from tests.tracing.otlp_receivers import Receiver, grpc_receiver, http_receiver

# Set for each test through monkeypatch; cleared first so the machine's own OTEL_*
# variables cannot leak into a case.
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "OTEL_PYTHON_EXCLUDED_URLS",
    "OTEL_PYTHON_ASGI_EXCLUDED_URLS",
    "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextlib.contextmanager
def pipeline() -> Iterator[TracerProvider]:
    provider = setup_tracing(Settings.from_env(), set_global=False)
    try:
        yield provider
    finally:
        shutdown_tracing(provider)


def emit(provider: TracerProvider, *names: str) -> None:
    tracer = provider.get_tracer("test")
    for name in names:
        with tracer.start_as_current_span(name):
            pass
    assert provider.force_flush(10_000)


def names(receiver: Receiver) -> list[str]:
    return [span.name for span in receiver.snapshot()]


# --- endpoints ------------------------------------------------------------------------


def test_generic_http_endpoint_gets_the_signal_path_appended(env: pytest.MonkeyPatch) -> None:
    with http_receiver(path="/otlp/v1/traces") as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint + "/otlp")
        with pipeline() as provider:
            emit(provider, "generic")
        assert names(receiver) == ["generic"]
        assert receiver.headers[0][":path"] == "/otlp/v1/traces"


def test_traces_endpoint_is_used_as_given(env: pytest.MonkeyPatch) -> None:
    with http_receiver(path="/custom/traces") as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/not-this-one")
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint + "/custom/traces")
        with pipeline() as provider:
            emit(provider, "specific")
        assert names(receiver) == ["specific"]
        assert receiver.headers[0][":path"] == "/custom/traces"


def test_traces_protocol_wins_over_the_generic_one(env: pytest.MonkeyPatch) -> None:
    with grpc_receiver() as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        with pipeline() as provider:
            emit(provider, "over-grpc")
        assert names(receiver) == ["over-grpc"]


# --- headers, compression, insecure, timeout --------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_headers_are_sent_url_decoded(env: pytest.MonkeyPatch, protocol: str) -> None:
    receiving = grpc_receiver() if protocol == "grpc" else http_receiver()
    with receiving as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "X-Tenant=acme,authorization=Bearer%20abc%3D")
        with pipeline() as provider:
            emit(provider, "with-headers")
        (headers,) = receiver.headers
        assert headers["x-tenant"] == "acme"
        assert headers["authorization"] == "Bearer abc="


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_gzip_compression(env: pytest.MonkeyPatch, protocol: str) -> None:
    receiving = grpc_receiver() if protocol == "grpc" else http_receiver()
    with receiving as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        with pipeline() as provider:
            emit(provider, "compressed")
        assert names(receiver) == ["compressed"]
        if protocol == "http/protobuf":
            assert receiver.headers[0]["content-encoding"] == "gzip"
        else:
            assert receiver.headers[0].get("grpc-accept-encoding", "gzip").find("gzip") >= 0


def test_insecure_grpc_endpoint_without_a_scheme(env: pytest.MonkeyPatch) -> None:
    with grpc_receiver() as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.removeprefix("http://"))
        env.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        with pipeline() as provider:
            emit(provider, "insecure")
        assert names(receiver) == ["insecure"]


def test_timeout_bounds_an_export_to_a_black_hole(env: pytest.MonkeyPatch) -> None:
    with black_hole() as port:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        settings = Settings.from_env()
        assert settings.otlp_timeout == 0.3
        exporter = build_exporter(settings)
        assert exporter is not None
        provider = TracerProvider(shutdown_on_exit=False)
        span = provider.get_tracer("t").start_span("lost")
        span.end()
        started = time.monotonic()
        result = exporter.export([span])  # type: ignore[list-item]
        elapsed = time.monotonic() - started
        exporter.shutdown()
        assert result.name == "FAILURE"
        # The spec's default timeout is 10 s; the variable's 300 ms must be what bounds it
        # (the generous margin absorbs a loaded machine, not a second default).
        assert elapsed < 5


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_certificate_verifies_the_receiver(
    env: pytest.MonkeyPatch, tmp_path: Path, certificate_authority: trustme.CA, protocol: str
) -> None:
    server_cert = certificate_authority.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    if protocol == "grpc":
        key = server_cert.private_key_pem.bytes()
        chain = b"".join(blob.bytes() for blob in server_cert.cert_chain_pems)
        receiving = grpc_receiver(tls=(key, chain))
    else:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        receiving = http_receiver(tls=context)
    with receiving as receiver:
        assert receiver.endpoint.startswith("https://")
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca_file))
        with pipeline() as provider:
            emit(provider, "over-tls")
        assert names(receiver) == ["over-tls"]


def test_missing_certificate_file_is_refused_at_start_up(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_CERTIFICATE"):
        Settings.from_env()


# --- samplers -------------------------------------------------------------------------

SAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def emit_under(provider: TracerProvider, name: str, traceparent: str | None) -> None:
    from opentelemetry.propagate import extract

    context = extract({"traceparent": traceparent}) if traceparent else None
    with provider.get_tracer("t").start_as_current_span(name, context=context):
        pass


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        # (root, child of a sampled parent, child of an unsampled parent)
        ("always_on", None, ["root", "sampled-parent", "unsampled-parent"]),
        ("always_off", None, []),
        ("traceidratio", "0", []),  # ignores the parent's decision
        ("traceidratio", "1", ["root", "sampled-parent", "unsampled-parent"]),
        ("parentbased_traceidratio", "0", ["sampled-parent"]),
        ("parentbased_always_on", None, ["root", "sampled-parent"]),
        ("parentbased_always_off", None, ["sampled-parent"]),
        (None, None, ["root", "sampled-parent"]),  # default: parentbased_traceidratio, 1.0
        (None, "0", ["sampled-parent"]),
    ],
)
def test_sampler_variables(
    env: pytest.MonkeyPatch, sampler: str | None, arg: str | None, expected: list[str]
) -> None:
    with http_receiver() as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        if sampler is not None:
            env.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg is not None:
            env.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        with pipeline() as provider:
            emit_under(provider, "root", None)
            emit_under(provider, "sampled-parent", SAMPLED_PARENT)
            emit_under(provider, "unsampled-parent", UNSAMPLED_PARENT)
            assert provider.force_flush(10_000)
        assert sorted(names(receiver)) == sorted(expected)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_SDK_DISABLED", "yes"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "1"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ],
)
def test_invalid_values_stop_start_up(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    env.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Settings.from_env()


# --- resource -------------------------------------------------------------------------


def test_resource_attributes_and_service_name_reach_the_receiver(env: pytest.MonkeyPatch) -> None:
    with grpc_receiver() as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_SERVICE_NAME", "bookings")
        env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,team=core,region=eu%2Dwest")
        with pipeline() as provider:
            emit(provider, "identified")
        (span,) = receiver.snapshot()
        assert span.resource["service.name"] == "bookings"  # OTEL_SERVICE_NAME wins
        assert span.resource["team"] == "core"
        assert span.resource["region"] == "eu-west"
        assert span.resource["telemetry.sdk.language"] == "python"


# --- OTEL_SDK_DISABLED ----------------------------------------------------------------


async def test_sdk_disabled_means_no_spans_and_nothing_else_changes(
    env: pytest.MonkeyPatch,
) -> None:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    with http_receiver() as receiver:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_SDK_DISABLED", "TRUE")
        settings = Settings.from_env()
        assert settings.sdk_disabled
        assert build_exporter(settings) is None
        registry = CollectorRegistry()
        provider = setup_tracing(settings, set_global=False)
        app = instrument(
            Starlette(routes=[Route("/items/{n}", item)]),
            settings,
            registry=registry,
            tracer_provider=provider,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/items/1", headers={"traceparent": SAMPLED_PARENT})
            metrics = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["x-request-id"]  # request ids still there
        assert 'handler="/items/{n}"' in metrics.text  # metrics still there
        with provider.get_tracer("t").start_as_current_span("manual") as span:
            assert not span.is_recording()
        assert provider.force_flush(5_000)
        shutdown_tracing(provider)
        assert receiver.snapshot() == []


async def test_instrument_traces_healthcare_but_not_the_probes(env: pytest.MonkeyPatch) -> None:
    """Built-in exclusions are exact paths; a pattern set by the variable is a search."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route(path, page) for path in ("/health", "/healthcare/{x}", "/reports/metrics/x")]

    async def traced_paths(settings: Settings) -> set[str]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = instrument(
            Starlette(routes=routes),
            settings,
            registry=CollectorRegistry(),
            tracer_provider=provider,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/health", "/healthcare/1", "/reports/metrics/x", "/metrics"):
                await client.get(path)
        return {str((span.attributes or {})["url.path"]) for span in exporter.get_finished_spans()}

    assert await traced_paths(Settings.from_env()) == {"/healthcare/1", "/reports/metrics/x"}
    env.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/health,/metrics")
    assert await traced_paths(Settings.from_env()) == set()
