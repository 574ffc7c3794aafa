"""Prometheus metrics: the HTTP middleware, the exposition app and metric helpers."""

from __future__ import annotations

from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.http import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, MetricsMiddleware

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_SIZE_BUCKETS", "MetricsMiddleware", "metrics_app"]
