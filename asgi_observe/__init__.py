"""asgi_observe: production observability for any ASGI service."""

from __future__ import annotations

from asgi_observe import checks
from asgi_observe.health import HealthApp
from asgi_observe.metrics import MetricsMiddleware, metrics_app
from asgi_observe.settings import Settings
from asgi_observe.stack import instrument

__all__ = ["HealthApp", "MetricsMiddleware", "Settings", "checks", "instrument", "metrics_app"]
