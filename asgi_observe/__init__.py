"""asgi_observe: production observability for any ASGI service.

Each piece is a small pure-ASGI middleware or app; `instrument()` assembles them all in
the right order. The names below are the public API.
"""

from __future__ import annotations

__version__ = "0.1.0"

from asgi_observe import checks
from asgi_observe.health import HealthApp
from asgi_observe.logs import (
    AccessLogMiddleware,
    bind_request_id,
    clear_context,
    configure_logging,
    get_logger,
)
from asgi_observe.metrics import (
    AppMetrics,
    CircuitState,
    MetricsMiddleware,
    legacy_metrics_app,
    metrics_app,
    register_system_metrics,
)
from asgi_observe.pii import PII_PATTERNS, redact
from asgi_observe.request_id import RequestIdMiddleware, get_request_id
from asgi_observe.security import MetricsGuard
from asgi_observe.settings import Settings
from asgi_observe.stack import instrument
from asgi_observe.tracing import (
    TracingMiddleware,
    add_span_attributes,
    record_exception,
    setup_tracing,
    shutdown_tracing,
    tracer,
)

__all__ = [
    "PII_PATTERNS",
    "AccessLogMiddleware",
    "AppMetrics",
    "CircuitState",
    "HealthApp",
    "MetricsGuard",
    "MetricsMiddleware",
    "RequestIdMiddleware",
    "Settings",
    "TracingMiddleware",
    "add_span_attributes",
    "bind_request_id",
    "checks",
    "clear_context",
    "configure_logging",
    "get_logger",
    "get_request_id",
    "instrument",
    "legacy_metrics_app",
    "metrics_app",
    "record_exception",
    "redact",
    "register_system_metrics",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
]
