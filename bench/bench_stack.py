"""The whole stack: `instrument()` against the peer libraries a user would stitch together.

Both sides get the same FastAPI app, trace every request (100% sampling) into the same
no-op exporter through a batch processor, and write one JSON access-log line per request
to /dev/null. The peer stack is prometheus-fastapi-instrumentator (metrics),
asgi-correlation-id (request ids), OpenTelemetry's ASGI middleware (tracing, without its
per-message spans) and a hand-written structlog access log.
"""

from __future__ import annotations

import os

import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

from asgi_observe import Settings, instrument
from asgi_observe.logs.config import configure_logging
from asgi_observe.types import ASGIApp
from bench.bench_logging import HandWrittenAccessLog
from bench.bench_tracing import NoOpExporter
from bench.harness import compare, print_table


def fastapi_app() -> FastAPI:
    # FastAPI's own telemetry is off on both sides: each stack brings its tracing.
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    return app


def provider() -> TracerProvider:
    traced = TracerProvider()
    traced.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    return traced


def peer_stack() -> ASGIApp:
    from asgi_correlation_id import CorrelationIdMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from prometheus_fastapi_instrumentator import Instrumentator

    app = fastapi_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    logged = HandWrittenAccessLog(app, structlog.get_logger("access"))
    traced = OpenTelemetryMiddleware(
        logged, tracer_provider=provider(), exclude_spans=["receive", "send"]
    )
    return CorrelationIdMiddleware(traced)


def our_stack() -> ASGIApp:
    return instrument(
        fastapi_app(),
        Settings(environment="production"),
        registry=CollectorRegistry(),
        tracer_provider=provider(),
    )


def main() -> None:
    with open(os.devnull, "w") as sink:
        configure_logging(Settings(environment="production"), stream=sink)
        results = compare(
            {
                "bare FastAPI": fastapi_app(),
                "asgi_observe instrument()": our_stack(),
                "peer stack (instrumentator + correlation-id + OTel ASGI + access log)": peer_stack(),
            },
            requests=1000,
        )
    print_table(
        "Whole stack on FastAPI (GET /items/42, 100% sampling)", results, baseline="bare FastAPI"
    )


if __name__ == "__main__":
    main()
