"""``/metrics/legacy``: the seed's old JSON snapshot, computed from the Prometheus registry.

The seed moved its JSON metrics from ``/metrics`` to ``/metrics/legacy`` and kept the
shape ``{"timestamp", "api_metrics", "system_metrics"}``. Every figure here is read from
the same samples Prometheus scrapes (the HTTP metrics of `MetricsMiddleware` and the
gauges of `register_system_metrics`), so the two views can never disagree and nothing is
counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from asgi_observe._asgi import Rendered, read_only_endpoint
from asgi_observe.metrics.exposition import ScrapeSource, guarded
from asgi_observe.metrics.system import SystemCollector
from asgi_observe.net import IPNetwork
from asgi_observe.types import ASGIApp, Scope

__all__ = ["legacy_metrics_app", "legacy_snapshot"]

_SYSTEM_KEYS = {
    "system_cpu_percent": "cpu",
    "system_memory_percent": "memory",
    "system_disk_percent": "disk",
    "system_process_resident_memory_bytes": "process_resident_memory_bytes",
    "system_process_open_fds": "process_open_fds",
    "system_process_threads": "process_threads",
}


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else round(value, 6)


def legacy_snapshot(source: Collector, *, namespace: str = "") -> dict[str, Any]:
    """The legacy JSON document for the samples of `source`.

    Args:
        source: a registry (or any collector) holding the HTTP and system metrics.
        namespace: the namespace given to `MetricsMiddleware` (HTTP metric names).

    ``api_metrics``: ``requests``, ``errors`` (5xx), ``client_errors`` (4xx),
    ``error_rate``, ``average_latency_ms``, ``in_progress``, and counts ``by_status``,
    ``by_method`` and ``by_handler``. ``system_metrics``: ``cpu``, ``memory`` and ``disk``
    percentages and the process figures, whatever namespace the system collector has.
    """
    prefix = f"{namespace}_" if namespace else ""
    requests_name = f"{prefix}http_requests_total"
    duration_sum = f"{prefix}http_request_duration_seconds_sum"
    duration_count = f"{prefix}http_request_duration_seconds_count"
    in_progress_name = f"{prefix}http_requests_in_progress"

    total = errors = client_errors = 0.0
    latency_sum = latency_count = in_progress = 0.0
    by_status: dict[str, float] = {}
    by_method: dict[str, float] = {}
    by_handler: dict[str, float] = {}
    system: dict[str, float | int] = {}

    for family in source.collect():
        for sample in family.samples:
            name = sample.name
            if name == requests_name:
                labels = sample.labels
                value = sample.value
                status = labels.get("status", "")
                total += value
                if status.startswith("5"):
                    errors += value
                elif status.startswith("4"):
                    client_errors += value
                by_status[status] = by_status.get(status, 0.0) + value
                method = labels.get("method", "")
                by_method[method] = by_method.get(method, 0.0) + value
                handler = labels.get("handler", "")
                by_handler[handler] = by_handler.get(handler, 0.0) + value
            elif name == duration_sum:
                latency_sum += sample.value
            elif name == duration_count:
                latency_count += sample.value
            elif name == in_progress_name:
                in_progress += sample.value
            else:
                for suffix, key in _SYSTEM_KEYS.items():
                    if key not in system and (name == suffix or name.endswith("_" + suffix)):
                        system[key] = _number(sample.value)

    return {
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "api_metrics": {
            "requests": _number(total),
            "errors": _number(errors),
            "client_errors": _number(client_errors),
            "error_rate": round(errors / total, 6) if total else 0.0,
            "average_latency_ms": round(latency_sum / latency_count * 1000.0, 3)
            if latency_count
            else None,
            "in_progress": _number(in_progress),
            "by_status": {k: _number(v) for k, v in sorted(by_status.items())},
            "by_method": {k: _number(v) for k, v in sorted(by_method.items())},
            "by_handler": {k: _number(v) for k, v in sorted(by_handler.items())},
        },
        "system_metrics": system,
    }


def legacy_metrics_app(
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "",
    token: str | None = None,
    allow: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    multiprocess_dir: str | os.PathLike[str] | None = None,
    collectors: Iterable[Collector] = (),
) -> ASGIApp:
    """An ASGI app answering GET/HEAD with `legacy_snapshot` as JSON.

    Same arguments and guards as `metrics_app` (it exposes the same information), plus
    `namespace`, the HTTP metrics namespace. Lifespan events are completed.
    """
    source = ScrapeSource(registry, multiprocess_dir=multiprocess_dir, collectors=collectors)

    # Without `register_system_metrics` the registry has no system gauges; the legacy
    # document still shows the seed's cpu/memory/disk figures, from a private collector
    # that adds no series to /metrics.
    fallback: list[SystemCollector] = []

    async def render_legacy(scope: Scope) -> Rendered:
        snapshot = legacy_snapshot(source, namespace=namespace)
        if not snapshot["system_metrics"]:
            if not fallback:
                fallback.append(SystemCollector())
            snapshot["system_metrics"] = legacy_snapshot(fallback[0])["system_metrics"]
        body = json.dumps(snapshot).encode("utf-8")
        return 200, body, "application/json", ((b"cache-control", b"no-store"),)

    serve_legacy = read_only_endpoint(render_legacy)
    return guarded(serve_legacy, token=token, allow=allow, trusted_proxies=trusted_proxies)
