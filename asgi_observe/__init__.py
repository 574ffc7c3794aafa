"""asgi_observe: production observability for any ASGI service."""

from __future__ import annotations

from asgi_observe import checks
from asgi_observe.health import HealthApp
from asgi_observe.metrics import (
    AppMetrics,
    CircuitState,
    MetricsMiddleware,
    legacy_metrics_app,
    metrics_app,
    register_system_metrics,
)
from asgi_observe.security import MetricsGuard
from asgi_observe.settings import Settings
from asgi_observe.stack import instrument

__all__ = [
    "AppMetrics",
    "CircuitState",
    "HealthApp",
    "MetricsGuard",
    "MetricsMiddleware",
    "Settings",
    "checks",
    "instrument",
    "legacy_metrics_app",
    "metrics_app",
    "register_system_metrics",
]
