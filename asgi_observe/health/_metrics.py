"""The health metrics, created once per registry.

``health_check_status{check}`` is 1 when the check's reported status is ``pass`` or
``warn`` and 0 when it is ``fail``: ``warn`` does not take the service out of rotation,
so it does not read as down either (an optional dependency that fails is visible in the
readiness answer and in the logs). ``health_check_duration_seconds{check}`` is a gauge
holding the duration of the latest evaluation, as the Prometheus blackbox exporter's
``probe_duration_seconds`` does: evaluations follow the probe cadence and are cached, so a
histogram would mostly count cache policy, not latency.

Several `HealthApp`s on one registry (tests, an app factory called twice) share the same
two gauges instead of failing with prometheus-client's "Duplicated timeseries".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

from asgi_observe.health._check import CheckResult
from asgi_observe.metrics._per_registry import PerRegistry

__all__ = ["HealthMetrics", "health_metrics"]

logger = logging.getLogger("asgi_observe")

STATUS_NAME = "health_check_status"
DURATION_NAME = "health_check_duration_seconds"


class HealthMetrics:
    """The two gauges of one registry."""

    def __init__(self, status: Gauge, duration: Gauge) -> None:
        self.status = status
        self.duration = duration

    def record(self, results: Iterable[CheckResult]) -> None:
        """Publish one evaluation; a metrics failure is reported, never raised."""
        try:
            for result in results:
                self.status.labels(check=result.name).set(0 if result.status == "fail" else 1)
                self.duration.labels(check=result.name).set(result.duration_seconds)
        except Exception:
            logger.warning("asgi_observe: could not record health metrics", exc_info=True)


_gauges: PerRegistry[HealthMetrics | None] = PerRegistry()


def health_metrics(registry: CollectorRegistry) -> HealthMetrics | None:
    """The gauges of `registry`, created on first use; None if they cannot exist there."""

    def create() -> HealthMetrics | None:
        metrics: HealthMetrics | None
        try:
            metrics = HealthMetrics(
                Gauge(
                    STATUS_NAME,
                    "Outcome of the latest readiness check: 1 pass or warn, 0 fail.",
                    ["check"],
                    registry=registry,
                    # With several workers, any worker seeing a failure shows as failing.
                    multiprocess_mode="livemin",
                ),
                Gauge(
                    DURATION_NAME,
                    "Duration of the latest readiness check, in seconds.",
                    ["check"],
                    registry=registry,
                    multiprocess_mode="livemax",
                ),
            )
        except ValueError:
            metrics = _existing(registry)
            if metrics is None:
                logger.warning(
                    "asgi_observe: %s or %s is already registered with another shape; "
                    "health metrics are disabled for this registry",
                    STATUS_NAME,
                    DURATION_NAME,
                )
                return None
        return metrics

    return _gauges.get_or_create(registry, None, None, create, lambda _: "unreachable")


def _existing(registry: CollectorRegistry) -> HealthMetrics | None:
    """Reuse gauges registered on `registry` by code that did not go through this module."""
    # prometheus-client offers no public lookup by name; this private map is stable
    # since 0.4 and only read here, after registration has already failed.
    names = getattr(registry, "_names_to_collectors", {})
    status = names.get(STATUS_NAME)
    duration = names.get(DURATION_NAME)
    if (
        isinstance(status, Gauge)
        and isinstance(duration, Gauge)
        and tuple(getattr(status, "_labelnames", ())) == ("check",)
        and tuple(getattr(duration, "_labelnames", ())) == ("check",)
    ):
        return HealthMetrics(status, duration)
    return None
