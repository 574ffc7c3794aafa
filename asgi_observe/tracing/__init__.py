"""OpenTelemetry tracing: pipeline set-up, the request middleware and manual-span helpers.

`setup_tracing` builds a `TracerProvider` from `Settings` (OTLP over gRPC or
HTTP/protobuf, parent-based ratio sampling, batch export) and `shutdown_tracing` flushes
it within a bounded time. `TracingMiddleware` makes one PII-redacted SERVER span per
HTTP request. `tracer`, `add_span_attributes` and `record_exception` are for code
inside a request. The package's modules: `setup` (provider, sampler, resource,
exporter), `export` (the redacting, outage-tolerant exporter wrapper), `middleware`
(`TracingMiddleware`), `starter` (the request span's start, cheap when unsampled) and
`api` (the manual-span helpers).
"""

from __future__ import annotations

from asgi_observe.tracing.api import add_span_attributes, record_exception, tracer
from asgi_observe.tracing.middleware import REQUEST_ID_SCOPE_KEY, TracingMiddleware
from asgi_observe.tracing.setup import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    build_exporter,
    build_resource,
    build_sampler,
    setup_tracing,
    shutdown_tracing,
)

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "REQUEST_ID_SCOPE_KEY",
    "TracingMiddleware",
    "add_span_attributes",
    "build_exporter",
    "build_resource",
    "build_sampler",
    "record_exception",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
]
