"""Prometheus metrics: the HTTP middleware, the exposition apps and metric helpers."""

from __future__ import annotations

from asgi_observe.metrics.app import AppMetrics, CircuitState
from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.http import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, MetricsMiddleware
from asgi_observe.metrics.internal import InternalMetricsServer
from asgi_observe.metrics.legacy import legacy_metrics_app
from asgi_observe.metrics.system import SystemCollector, register_system_metrics

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "AppMetrics",
    "CircuitState",
    "InternalMetricsServer",
    "MetricsMiddleware",
    "SystemCollector",
    "legacy_metrics_app",
    "metrics_app",
    "register_system_metrics",
]
