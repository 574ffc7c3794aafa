"""The apps served by the HTTP benchmark, one factory per configuration.

Every configuration wraps the same Starlette app (``GET /items/{item_id}`` answering a
small JSON body) and is served by its own uvicorn process::

    uvicorn --factory bench.http_apps:create_<name>

so what is measured is a real server with one worker, not an in-process loop. The
factories read their configuration from the environment the benchmark gives the server
(``ENVIRONMENT=production``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at the local
OTLP/HTTP sink, ``OTEL_TRACES_SAMPLER_ARG``), through `Settings.from_env()` for ours and
through the OpenTelemetry SDK's own classes for the peers, the way each library's user
would set it up. `CONFIGS` lists the configurations in the order they are reported.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import structlog
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument
from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.logs.config import configure_logging
from asgi_observe.metrics.http import MetricsMiddleware
from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.tracing import TracingMiddleware, setup_tracing
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from bench.bench_logging import HandWrittenAccessLog
from bench.work_floor import WorkFloor

__all__ = ["CONFIGS", "Config", "PassThrough", "bare_app"]


@dataclass(frozen=True)
class Config:
    """One benchmarked configuration: `create_<name>` below builds its app.

    `sampling` is the trace ratio given to the server (``OTEL_TRACES_SAMPLER_ARG``),
    `exports` whether it sends spans to the OTLP sink, `logs` whether it writes one
    access-log line per request to its stdout (a pipe the benchmark drains).
    """

    name: str
    label: str
    sampling: float = 1.0
    exports: bool = False
    logs: bool = False


CONFIGS: tuple[Config, ...] = (
    Config("passthrough", "pass-through middleware (send + receive wrapped)"),
    Config("passthrough_x4", "4 nested pass-through middlewares"),
    Config("metrics", "MetricsMiddleware"),
    Config("request_id", "RequestIdMiddleware"),
    Config("access_log", "AccessLogMiddleware (JSON to a pipe)", logs=True),
    Config("tracing_10", "TracingMiddleware, 10% sampled, OTLP/HTTP export", 0.1, exports=True),
    Config("instrument_10", "instrument(), 10% sampled, JSON access log", 0.1, True, True),
    Config("instrument_100", "instrument(), 100% sampled, JSON access log", 1.0, True, True),
    Config("work_floor_10", "work floor (bench.work_floor), 10% sampled", 0.1, True, True),
    Config("work_floor_100", "work floor (bench.work_floor), 100% sampled", 1.0, True, True),
    Config("correlation_id", "asgi-correlation-id CorrelationIdMiddleware"),
    Config("starlette_exporter", "starlette-exporter PrometheusMiddleware"),
    Config("instrumentator", "prometheus-fastapi-instrumentator"),
    Config("otel_asgi_100", "OpenTelemetry ASGI middleware, 100%, OTLP/HTTP", 1.0, exports=True),
    Config(
        "combined_peers",
        "starlette-exporter + asgi-correlation-id + OTel ASGI 100% + structlog access log",
        1.0,
        exports=True,
        logs=True,
    ),
)


def bare_app() -> Starlette:
    """The app every configuration wraps: one templated route, a small JSON answer."""

    async def read_item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    return Starlette(routes=[Route("/items/{item_id}", read_item)])


class PassThrough:
    """The structural floor of one layer: wraps `receive` and `send` and does nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_passed() -> Message:
            return await receive()

        async def send_passed(message: Message) -> None:
            await send(message)

        await self.app(scope, receive_passed, send_passed)


def _sampling_ratio() -> float:
    return float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))


def _otlp_provider(sampler: Sampler) -> TracerProvider:
    """A provider exporting over OTLP/HTTP in batches to the benchmark's sink."""
    endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def _peer_provider() -> TracerProvider:
    """What a user of the OpenTelemetry SDK alone would build: ratio sampler, OTLP/HTTP batch."""
    return _otlp_provider(ParentBased(TraceIdRatioBased(_sampling_ratio())))


def _structlog_to_stdout() -> None:
    """A plain structlog production set-up: JSON lines on stdout, flushed per line."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def create_bare() -> ASGIApp:
    """The baseline every configuration is compared with."""
    return bare_app()


def create_passthrough() -> ASGIApp:
    return PassThrough(bare_app())


def create_passthrough_x4() -> ASGIApp:
    return PassThrough(PassThrough(PassThrough(PassThrough(bare_app()))))


def create_metrics() -> ASGIApp:
    return MetricsMiddleware(bare_app())


def create_request_id() -> ASGIApp:
    return RequestIdMiddleware(bare_app())


def create_access_log() -> ASGIApp:
    configure_logging(Settings.from_env())
    return AccessLogMiddleware(bare_app())


def create_tracing_10() -> ASGIApp:
    # setup_tracing: the sampler and the OTLP/HTTP exporter from the OTEL_* variables.
    return TracingMiddleware(bare_app(), tracer_provider=setup_tracing(Settings.from_env()))


def create_instrument_10() -> ASGIApp:
    settings = Settings.from_env()
    configure_logging(settings)
    return instrument(bare_app(), settings)


def create_instrument_100() -> ASGIApp:
    return create_instrument_10()  # the ratio comes from OTEL_TRACES_SAMPLER_ARG


def create_work_floor_10() -> ASGIApp:
    # The ratio is applied by the floor itself, once per request: the SDK keeps every span.
    tracer = _otlp_provider(ALWAYS_ON).get_tracer("work-floor")
    return WorkFloor(bare_app(), tracer=tracer, ratio=_sampling_ratio(), stream=sys.stdout)


def create_work_floor_100() -> ASGIApp:
    return create_work_floor_10()  # the ratio comes from OTEL_TRACES_SAMPLER_ARG


def create_correlation_id() -> ASGIApp:
    from asgi_correlation_id import CorrelationIdMiddleware

    return CorrelationIdMiddleware(bare_app())


def create_starlette_exporter() -> ASGIApp:
    from starlette_exporter import PrometheusMiddleware

    return PrometheusMiddleware(bare_app())


def create_instrumentator() -> ASGIApp:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = bare_app()
    Instrumentator().instrument(app)  # works on any Starlette app: it adds its middleware
    return app


def create_otel_asgi_100() -> ASGIApp:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # Its defaults, as a user gets them: send and receive spans included.
    return OpenTelemetryMiddleware(bare_app(), tracer_provider=_peer_provider())


def create_combined_peers() -> ASGIApp:
    from asgi_correlation_id import CorrelationIdMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette_exporter import PrometheusMiddleware

    _structlog_to_stdout()
    logged = HandWrittenAccessLog(bare_app(), structlog.get_logger("access"))
    measured = PrometheusMiddleware(logged)
    traced = OpenTelemetryMiddleware(measured, tracer_provider=_peer_provider())
    return CorrelationIdMiddleware(traced)
