"""The five HTTP metric families, created once per registry.

Starlette rebuilds its middleware stack, tests build many apps, and two middlewares may
share a registry: registering the same names twice would raise prometheus-client's
"Duplicated timeseries". Families are therefore get-or-create, keyed by registry and
namespace, and a second request for the same names with different buckets is refused
with a clear error instead of silently reusing the first buckets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from asgi_observe.metrics._per_registry import PerRegistry
from asgi_observe.routes import LabelCap, normalize_method, peek_route, unmatched_label
from asgi_observe.types import Scope

__all__ = ["HttpMetrics", "InFlight", "http_metrics_for"]


class InFlight(Collector):
    """``http_requests_in_progress`` computed at scrape time from the requests in flight.

    The handler label is a route template, which is only known once the router has run,
    well after the request started. Rather than re-matching routes up front on every
    request, the scopes of requests in flight are kept (one dict insert and delete per
    request) and grouped by their route when Prometheus scrapes; by then routing of all
    but the newest requests has happened.
    """

    def __init__(self, name: str, handlers: LabelCap) -> None:
        self.name = name
        self.active: dict[int, Scope] = {}
        self._handlers = handlers
        # Series once seen are kept at 0 when idle, so dashboards and alerts see a
        # value rather than a vanished series. Bounded: methods fold, handlers are capped.
        self._seen: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            self.name, "HTTP requests currently being served", labels=("method", "handler")
        )
        counts = dict.fromkeys(self._seen, 0)
        for scope in list(self.active.values()):  # list() is atomic under the GIL
            template = peek_route(scope)
            handler = unmatched_label(scope) if template is None else self._handlers.bound(template)
            key = (normalize_method(scope.get("method")), handler)
            counts[key] = counts.get(key, 0) + 1
        self._seen.update(counts)
        for (method, handler), count in sorted(counts.items()):
            family.add_metric((method, handler), count)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            self.name, "HTTP requests currently being served", labels=("method", "handler")
        )


class HttpMetrics:
    """The families of one (registry, namespace) pair."""

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
        *,
        multiprocess: bool,
        max_handlers: int,
    ) -> None:
        self.buckets = buckets
        self.handlers = LabelCap(max_handlers)
        self.size_buckets = size_buckets
        prefix = f"{namespace}_" if namespace else ""
        self.requests = Counter(
            "http_requests_total",
            "Total HTTP requests by method, status and handler",
            ("method", "status", "handler"),
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency until the last body byte is sent",
            ("method", "handler"),
            namespace=namespace,
            buckets=buckets,
            registry=registry,
        )
        self.request_size = Histogram(
            "http_request_size_bytes",
            "HTTP request body bytes received",
            ("handler",),
            namespace=namespace,
            buckets=size_buckets,
            registry=registry,
        )
        self.response_size = Histogram(
            "http_response_size_bytes",
            "HTTP response body bytes sent",
            ("handler",),
            namespace=namespace,
            buckets=size_buckets,
            registry=registry,
        )
        self.in_flight: InFlight | None = None
        self.in_progress_gauge: Gauge | None = None
        if multiprocess:
            # Worker processes cannot share a scrape-time collector; a livesum gauge
            # written to the multiprocess files sums live workers only.
            self.in_progress_gauge = Gauge(
                "http_requests_in_progress",
                "HTTP requests currently being served",
                ("method", "handler"),
                namespace=namespace,
                registry=registry,
                multiprocess_mode="livesum",
            )
        else:
            self.in_flight = InFlight(f"{prefix}http_requests_in_progress", self.handlers)
            registry.register(self.in_flight)


_families: PerRegistry[HttpMetrics] = PerRegistry()


def http_metrics_for(
    registry: CollectorRegistry,
    namespace: str,
    buckets: Sequence[float],
    size_buckets: Sequence[float],
    *,
    multiprocess: bool,
    max_handlers: int = 200,
) -> HttpMetrics:
    """Get or create the families for `registry` and `namespace`."""
    wanted = (tuple(float(b) for b in buckets), tuple(float(b) for b in size_buckets))
    return _families.get_or_create(
        registry,
        namespace,
        wanted,
        lambda: HttpMetrics(
            registry,
            namespace,
            wanted[0],
            wanted[1],
            multiprocess=multiprocess,
            max_handlers=max_handlers,
        ),
        lambda _: (
            f"HTTP metrics for namespace {namespace!r} already exist in this registry "
            "with other buckets; use another registry or namespace, or the same buckets"
        ),
    )
