"""Health probes: `HealthApp` (liveness, readiness, startup) and the built-in `checks`."""

from __future__ import annotations

from asgi_observe.health import checks
from asgi_observe.health._check import Check, CheckFunction, CheckResult, Status
from asgi_observe.health.app import HealthApp

__all__ = ["Check", "CheckFunction", "CheckResult", "HealthApp", "Status", "checks"]
