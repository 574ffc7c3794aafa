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

Recording: in-process, the request counter and the histograms are an `HttpRecorder`
(one lock per request instead of prometheus-client's seven, no per-observation Python
loop) exposing the same samples through the custom-collector API; in multiprocess mode
prometheus-client's own metrics record, since only they write its files.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    Sample,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from prometheus_client.values import MutexValue, ValueClass

from asgi_observe.metrics._per_registry import PerRegistry
from asgi_observe.routes import LabelCap, normalize_method, peek_route, unmatched_label
from asgi_observe.types import Scope

__all__ = [
    "INSTRUMENTATOR_HIGHR_BUCKETS",
    "ClientSeries",
    "HttpMetrics",
    "HttpRecorder",
    "InFlight",
    "LabelValues",
    "RecorderSeries",
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


class _CounterCell:
    """One series of the request counter: what a prometheus-client Counter child holds."""

    __slots__ = ("created", "exemplar", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.exemplar: Exemplar | None = None
        self.created = time.time()


class _HistogramCell:
    """One series of a histogram: per-bucket (not cumulative) counts and the sum."""

    __slots__ = ("counts", "created", "exemplars", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0.0] * size
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * size
        self.created = time.time()


_Snapshot = list[tuple[tuple[str, ...], list[float], float, list[Exemplar | None], float]]
"""A histogram's series at one instant: labels, bucket counts, sum, exemplars, creation."""

_go_float = cast("Callable[[float], str]", floatToGoString)
"""How prometheus-client writes a bucket bound (``+Inf``, ``1e+06``)."""


def _upper_bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """The bounds prometheus-client's Histogram uses for `buckets` (validated by it)."""
    bounds = [float(bound) for bound in buckets]
    if bounds[-1] != float("inf"):
        bounds.append(float("inf"))
    return tuple(bounds)


class _HistogramFamily:
    """The series of one histogram family, in first-recorded order (as prometheus-client)."""

    def __init__(
        self, template: Histogram, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        (described,) = template.describe()
        self.name = described.name
        self.documentation = described.documentation
        self.labelnames = tuple(labelnames)
        self.bounds = _upper_bounds(buckets)
        self.les = tuple(_go_float(bound) for bound in self.bounds)
        self.cells: dict[tuple[str, ...], _HistogramCell] = {}

    def cell(self, labels: tuple[str, ...]) -> _HistogramCell:
        """Get or create the series of `labels`; call with the recorder's lock held."""
        found = self.cells.get(labels)
        if found is None:
            found = self.cells[labels] = _HistogramCell(len(self.bounds))
        return found

    def snapshot(self) -> _Snapshot:
        """A copy of every series; call with the recorder's lock held."""
        return [
            (labels, list(cell.counts), cell.sum, list(cell.exemplars), cell.created)
            for labels, cell in self.cells.items()
        ]

    def family(
        self,
        snapshot: _Snapshot,
        *,
        created: bool,
    ) -> HistogramMetricFamily:
        """The samples prometheus-client's Histogram would expose for `snapshot`."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, counts, total, exemplars, made in snapshot:
            cumulative = 0.0
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            for le, count, exemplar in zip(self.les, counts, exemplars, strict=True):
                cumulative += count
                buckets.append((le, cumulative) if exemplar is None else (le, cumulative, exemplar))
            family.add_metric(labels, buckets, total)
            series = dict(zip(self.labelnames, labels, strict=True))
            # HistogramMetricFamily leaves out _count with a negative first bucket, the
            # Histogram only _sum; and it takes no creation time: both appended as the
            # Histogram orders them.
            if self.bounds[0] < 0:
                family.samples.append(Sample(f"{self.name}_count", series, cumulative))
            if created:
                family.samples.append(Sample(f"{self.name}_created", dict(series), made))
        return family


class RecorderSeries:
    """What one (method, status, handler, dynamic labels) request updates, in-process.

    prometheus-client takes a lock per value (7 per request with a counter and three
    histograms) and runs a bucket loop in Python per observation; here a request finds
    its buckets by bisection and updates every value under the recorder's single lock.
    """

    __slots__ = (
        "_duration",
        "_duration_bounds",
        "_highr",
        "_highr_bounds",
        "_lock",
        "_request_size",
        "_requests",
        "_response_size",
        "_size_bounds",
    )

    def __init__(
        self,
        recorder: HttpRecorder,
        cells: tuple[
            _CounterCell, _HistogramCell, _HistogramCell, _HistogramCell, _HistogramCell | None
        ],
    ) -> None:
        requests, duration, request_size, response_size, highr = cells
        self._lock = recorder.lock
        self._duration_bounds = recorder.duration.bounds
        self._size_bounds = recorder.request_size.bounds
        self._highr_bounds = () if recorder.highr is None else recorder.highr.bounds
        self._requests = requests
        self._duration = duration
        self._request_size = request_size
        self._response_size = response_size
        self._highr = highr

    def record(self, duration: float, received: int, sent: int, trace_id: str | None) -> None:
        """Count one finished request; `trace_id` (sampled spans only) becomes the exemplar."""
        bounds = self._duration_bounds
        sizes = self._size_bounds
        at = bisect_left(bounds, duration)
        # Only NaN fails this (bisection puts it first): prometheus-client adds it to the
        # sum and to no bucket, and so does this.
        in_bucket = duration <= bounds[at]
        received_at = bisect_left(sizes, received)
        sent_at = bisect_left(sizes, sent)
        highr = self._highr
        highr_at = 0 if highr is None else bisect_left(self._highr_bounds, duration)
        exemplars: tuple[Exemplar, Exemplar] | None = None
        if trace_id is not None:
            labels = {"trace_id": trace_id}
            now = time.time()
            exemplars = (Exemplar(labels, 1, now), Exemplar(labels, duration, now))
        requests = self._requests
        timed = self._duration
        request_size = self._request_size
        response_size = self._response_size
        with self._lock:
            requests.value += 1
            timed.sum += duration
            if in_bucket:
                timed.counts[at] += 1
            request_size.sum += received
            request_size.counts[received_at] += 1
            response_size.sum += sent
            response_size.counts[sent_at] += 1
            if highr is not None:
                highr.sum += duration
                if in_bucket:
                    highr.counts[highr_at] += 1
            if exemplars is not None:
                requests.exemplar = exemplars[0]
                if in_bucket:
                    timed.exemplars[at] = exemplars[1]


class ClientSeries:
    """What one request updates with prometheus-client's own children (multiprocess mode:
    the values must live in its files, which only its Counter and Histogram write)."""

    __slots__ = ("_duration", "_highr", "_request_size", "_requests", "_response_size")

    def __init__(
        self,
        requests: Counter,
        duration: Histogram,
        request_size: Histogram,
        response_size: Histogram,
        highr: Histogram | None,
    ) -> None:
        self._requests = requests
        self._duration = duration
        self._request_size = request_size
        self._response_size = response_size
        self._highr = highr

    def record(self, duration: float, received: int, sent: int, trace_id: str | None) -> None:
        """Count one finished request; `trace_id` (sampled spans only) becomes the exemplar."""
        if trace_id is not None:
            exemplar = {"trace_id": trace_id}
            self._requests.inc(1, exemplar)
            self._duration.observe(duration, exemplar)
        else:
            self._requests.inc()
            self._duration.observe(duration)
        self._request_size.observe(received)
        self._response_size.observe(sent)
        if self._highr is not None:
            self._highr.observe(duration)


class HttpRecorder(Collector):
    """The request counter and the histograms of one family set, kept in-process.

    Exposes exactly what prometheus-client's Counter and Histograms would (names, HELP,
    label order, series order, values, exemplars, ``_created``), through the custom
    collector API, while recording costs one lock per request (`RecorderSeries`). The
    families are first built as unregistered prometheus-client metrics, so names, labels
    and buckets are validated by the library itself and `describe` (which the registry
    checks for duplicated names) returns the same names.
    """

    def __init__(
        self,
        templates: tuple[Counter, Histogram, Histogram, Histogram, Histogram | None],
        *,
        per_request: tuple[str, ...],
        const_names: tuple[str, ...],
        const_values: tuple[str, ...],
        buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
    ) -> None:
        self.lock = threading.Lock()
        self._templates = tuple(template for template in templates if template is not None)
        (requests,) = templates[0].describe()
        self._requests_name = requests.name
        self._requests_documentation = requests.documentation
        self._requests_labels = ("method", "status", "handler", *per_request)
        self.requests: dict[tuple[str, ...], _CounterCell] = {}
        self.duration = _HistogramFamily(templates[1], ("method", "handler", *per_request), buckets)
        self.request_size = _HistogramFamily(templates[2], ("handler", *const_names), size_buckets)
        self.response_size = _HistogramFamily(templates[3], ("handler", *const_names), size_buckets)
        self.highr: _HistogramFamily | None = None
        if templates[4] is not None:
            self.highr = _HistogramFamily(templates[4], const_names, INSTRUMENTATOR_HIGHR_BUCKETS)
            if not const_names:
                # A histogram without labels exists from its creation, requests or not.
                self.highr.cell(())
        self._const = const_values
        # Asked at each scrape whether prometheus-client writes _created samples now
        # (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()).
        self._probe = Counter("asgi_observe_created_probe", "probe", registry=None)

    def series(
        self, method: str, status_label: str, handler: str, values: tuple[str, ...]
    ) -> RecorderSeries:
        """The cells one kind of request updates, created on first use."""
        const = self._const
        with self.lock:
            key = (method, status_label, handler, *values, *const)
            requests = self.requests.get(key)
            if requests is None:
                requests = self.requests[key] = _CounterCell()
            highr = self.highr
            cells = (
                requests,
                self.duration.cell((method, handler, *values, *const)),
                self.request_size.cell((handler, *const)),
                self.response_size.cell((handler, *const)),
                None if highr is None else highr.cell(const),
            )
        return RecorderSeries(self, cells)

    def _created_enabled(self) -> bool:
        return any(
            sample.name.endswith("_created")
            for metric in self._probe.collect()
            for sample in metric.samples
        )

    def collect(self) -> Iterator[Metric]:
        created = self._created_enabled()
        histograms = [self.duration, self.request_size, self.response_size]
        if self.highr is not None:
            histograms.append(self.highr)
        with self.lock:
            counts = [
                (labels, cell.value, cell.exemplar, cell.created)
                for labels, cell in self.requests.items()
            ]
            snapshots = [histogram.snapshot() for histogram in histograms]
        requests = CounterMetricFamily(
            self._requests_name, self._requests_documentation, labels=self._requests_labels
        )
        for labels, value, exemplar, made in counts:
            requests.add_metric(labels, value, created=made if created else None, exemplar=exemplar)
        yield requests
        for histogram, snapshot in zip(histograms, snapshots, strict=True):
            yield histogram.family(snapshot, created=created)

    def describe(self) -> Iterator[Metric]:
        for template in self._templates:
            yield from template.describe()


class HttpMetrics:
    """The families of one (registry, namespace) pair.

    In-process the request counter and histograms are an `HttpRecorder` (one lock per
    request); in multiprocess mode, or with `client_families`, prometheus-client's own
    Counter and Histograms, whose values its multiprocess files hold.
    """

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
        client_families: bool = False,
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
        # prometheus-client picks where values live when it is imported: in memory, or in
        # PROMETHEUS_MULTIPROC_DIR's files, which only its own metrics write.
        in_memory = ValueClass is MutexValue
        own = in_memory and not multiprocess and not client_families
        # Built unregistered for the recorder: the library validates names, labels and
        # buckets as it always did, and describes the families.
        target = None if own else registry
        requests = Counter(
            "http_requests_total",
            "Total HTTP requests by method, status and handler",
            ("method", "status", "handler", *per_request),
            namespace=namespace,
            registry=target,
        )
        duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency until the last body byte is sent",
            ("method", "handler", *per_request),
            namespace=namespace,
            buckets=buckets,
            registry=target,
        )
        request_size = Histogram(
            "http_request_size_bytes",
            "HTTP request body bytes received",
            ("handler", *const_names),
            namespace=namespace,
            buckets=size_buckets,
            registry=target,
        )
        response_size = Histogram(
            "http_response_size_bytes",
            "HTTP response body bytes sent",
            ("handler", *const_names),
            namespace=namespace,
            buckets=size_buckets,
            registry=target,
        )
        highr: Histogram | None = None
        if instrumentator_compat:
            highr = Histogram(
                "http_request_duration_highr_seconds",
                "HTTP request latency, fine buckets and no labels (instrumentator's layout)",
                const_names,
                namespace=namespace,
                buckets=INSTRUMENTATOR_HIGHR_BUCKETS,
                registry=target,
            )
        self._client = (requests, duration, request_size, response_size, highr)
        self.recorder: HttpRecorder | None = None
        if own:
            self.recorder = HttpRecorder(
                self._client,
                per_request=per_request,
                const_names=const_names,
                const_values=self.const_values,
                buckets=buckets,
                size_buckets=size_buckets,
            )
            registry.register(self.recorder)
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

    def series(
        self, method: str, status: int, handler: str, values: tuple[str, ...]
    ) -> RecorderSeries | ClientSeries:
        """What a request with these labels updates (the caller caches it)."""
        if self.recorder is not None:
            return self.recorder.series(method, self.status_label(status), handler, values)
        const = self.const_values
        requests, duration, request_size, response_size, highr = self._client
        return ClientSeries(
            requests.labels(method, self.status_label(status), handler, *values, *const),
            duration.labels(method, handler, *values, *const),
            request_size.labels(handler, *const),
            response_size.labels(handler, *const),
            None if highr is None else (highr.labels(*const) if const else highr),
        )


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
    client_families: bool = False,
) -> HttpMetrics:
    """Get or create the families for `registry` and `namespace`.

    Like `max_handlers` and `multiprocess`, `client_families` (prometheus-client's own
    metrics even in-process: the reference the recorder is tested against) is decided by
    the first caller.
    """
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
            client_families=client_families,
        ),
        lambda _: (
            f"HTTP metrics for namespace {namespace!r} already exist in this registry with "
            "other buckets, labels or compatibility switch; use another registry or "
            "namespace, or the same options"
        ),
    )
