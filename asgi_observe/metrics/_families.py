"""The HTTP metric families, created once per registry.

Starlette rebuilds its middleware stack, tests build many apps, and two middlewares may
share a registry: registering the same names twice would raise prometheus-client's
"Duplicated timeseries". Families are therefore get-or-create, keyed by registry and
namespace, and a second request for the same names with different buckets is refused
with a clear error instead of silently reusing the first buckets (or other labels).

Label layout: the built-in labels first, then the dynamic labels of
`MetricsMiddleware(labels=...)` (on the request counter, the latency histogram and the
in-progress gauge), then the constant labels (``METRICS_LABELS``, on every family).
With the prometheus-fastapi-instrumentator compatibility switch the status label holds
the class (``2xx``), the in-progress gauge is also exposed as
``http_requests_inprogress``, and the ``http_request_duration_highr_seconds``
histogram (no labels, many buckets) is added, so that tool's dashboards keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from asgi_observe.metrics._per_registry import PerRegistry
from asgi_observe.routes import LabelCap, normalize_method, peek_route, unmatched_label
from asgi_observe.types import Scope

__all__ = [
    "INSTRUMENTATOR_HIGHR_BUCKETS",
    "HttpMetrics",
    "InFlight",
    "LabelValues",
    "http_metrics_for",
]

INSTRUMENTATOR_HIGHR_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0,
    4.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip
"""prometheus-fastapi-instrumentator's ``http_request_duration_highr_seconds`` buckets."""

LabelValues = Callable[[Scope], tuple[str, ...]]
"""The dynamic label values of one request, in the families' label order."""


class InFlight(Collector):
    """``http_requests_in_progress`` computed at scrape time from the requests in flight.

    The handler label is a route template, which is only known once the router has run,
    well after the request started. Rather than re-matching routes up front on every
    request, the scopes of requests in flight are kept (one dict insert and delete per
    request) and grouped by their route when Prometheus scrapes; by then routing of all
    but the newest requests has happened.
    """

    def __init__(
        self,
        names: Sequence[str],
        handlers: LabelCap,
        labelnames: Sequence[str] = ("method", "handler"),
        const_values: tuple[str, ...] = (),
    ) -> None:
        self.names = tuple(names)
        # Requests in flight: the scope and the dynamic label values of its middleware.
        self.active: dict[int, tuple[Scope, LabelValues]] = {}
        self._handlers = handlers
        self._labelnames = tuple(labelnames)
        self._const = const_values
        # Series once seen are kept at 0 when idle, so dashboards and alerts see a
        # value rather than a vanished series. Bounded: methods fold, handlers are capped.
        self._seen: set[tuple[str, ...]] = set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict.fromkeys(self._seen, 0)
        for scope, values in list(self.active.values()):  # list() is atomic under the GIL
            template = peek_route(scope)
            handler = unmatched_label(scope) if template is None else self._handlers.bound(template)
            key = (normalize_method(scope.get("method")), handler, *values(scope), *self._const)
            counts[key] = counts.get(key, 0) + 1
        self._seen.update(counts)
        for name in self.names:
            family = self._family(name)
            for labels, count in sorted(counts.items()):
                family.add_metric(labels, count)
            yield family

    def _family(self, name: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            name, "HTTP requests currently being served", labels=self._labelnames
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name in self.names:
            yield self._family(name)


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
        dynamic_labels: tuple[str, ...] = (),
        const_labels: tuple[tuple[str, str], ...] = (),
        instrumentator_compat: bool = False,
    ) -> None:
        self.buckets = buckets
        self.handlers = LabelCap(max_handlers)
        self.size_buckets = size_buckets
        self.dynamic_labels = dynamic_labels
        self.const_labels = const_labels
        self.const_values = tuple(value for _, value in const_labels)
        self.instrumentator_compat = instrumentator_compat
        const_names = tuple(name for name, _ in const_labels)
        per_request = (*dynamic_labels, *const_names)
        prefix = f"{namespace}_" if namespace else ""
        self.requests = Counter(
            "http_requests_total",
            "Total HTTP requests by method, status and handler",
            ("method", "status", "handler", *per_request),
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency until the last body byte is sent",
            ("method", "handler", *per_request),
            namespace=namespace,
            buckets=buckets,
            registry=registry,
        )
        self.request_size = Histogram(
            "http_request_size_bytes",
            "HTTP request body bytes received",
            ("handler", *const_names),
            namespace=namespace,
            buckets=size_buckets,
            registry=registry,
        )
        self.response_size = Histogram(
            "http_response_size_bytes",
            "HTTP response body bytes sent",
            ("handler", *const_names),
            namespace=namespace,
            buckets=size_buckets,
            registry=registry,
        )
        self.duration_highr: Histogram | None = None
        if instrumentator_compat:
            self.duration_highr = Histogram(
                "http_request_duration_highr_seconds",
                "HTTP request latency, fine buckets and no labels (instrumentator's layout)",
                const_names,
                namespace=namespace,
                buckets=INSTRUMENTATOR_HIGHR_BUCKETS,
                registry=registry,
            )
        gauge_names = [f"{prefix}http_requests_in_progress"]
        if instrumentator_compat:
            gauge_names.append(f"{prefix}http_requests_inprogress")
        self.in_flight: InFlight | None = None
        self.in_progress_gauges: tuple[Gauge, ...] = ()
        if multiprocess:
            # Worker processes cannot share a scrape-time collector; a livesum gauge
            # written to the multiprocess files sums live workers only.
            self.in_progress_gauges = tuple(
                Gauge(
                    name,
                    "HTTP requests currently being served",
                    ("method", "handler", *per_request),
                    registry=registry,
                    multiprocess_mode="livesum",
                )
                for name in gauge_names
            )
        else:
            self.in_flight = InFlight(
                gauge_names,
                self.handlers,
                ("method", "handler", *per_request),
                self.const_values,
            )
            registry.register(self.in_flight)

    def status_label(self, status: int) -> str:
        """The exact code, or its class (``2xx``) with the instrumentator switch."""
        return f"{status // 100}xx" if self.instrumentator_compat else str(status)


_families: PerRegistry[HttpMetrics] = PerRegistry()


def http_metrics_for(
    registry: CollectorRegistry,
    namespace: str,
    buckets: Sequence[float],
    size_buckets: Sequence[float],
    *,
    multiprocess: bool,
    max_handlers: int = 200,
    dynamic_labels: tuple[str, ...] = (),
    const_labels: tuple[tuple[str, str], ...] = (),
    instrumentator_compat: bool = False,
) -> HttpMetrics:
    """Get or create the families for `registry` and `namespace`."""
    wanted = (
        tuple(float(b) for b in buckets),
        tuple(float(b) for b in size_buckets),
        dynamic_labels,
        const_labels,
        instrumentator_compat,
    )
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
            dynamic_labels=dynamic_labels,
            const_labels=const_labels,
            instrumentator_compat=instrumentator_compat,
        ),
        lambda _: (
            f"HTTP metrics for namespace {namespace!r} already exist in this registry with "
            "other buckets, labels or compatibility switch; use another registry or "
            "namespace, or the same options"
        ),
    )
