"""The in-process HTTP recorder exposes exactly what prometheus-client's own metrics did.

Every test drives the same requests through two `MetricsMiddleware`: one on the
recorder (the in-process default) and one on prometheus-client's Counter and
Histograms (``client_families``, what multiprocess mode keeps using), then compares
what a scrape sees. Only time-of-day values may differ: ``_created`` samples and
exemplar timestamps (both are ``time.time()`` at the moment of recording).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_openmetrics

from asgi_observe import MetricsMiddleware
from asgi_observe.metrics._families import http_metrics_for
from asgi_observe.metrics.http import DEFAULT_SIZE_BUCKETS
from asgi_observe.metrics.legacy import legacy_snapshot
from asgi_observe.routes import PREFLIGHT_LABEL, UNMATCHED_LABEL
from asgi_observe.settings import DEFAULT_BUCKETS
from asgi_observe.types import Receive, Scope, Send
from tests.metrics.helpers import value

REPO = Path(__file__).resolve().parents[2]

_CREATED_LINE = re.compile(r"^(\S+_created(?:\{.*\})?) \S+$", re.MULTILINE)
_EXEMPLAR_TIME = re.compile(r"(# \{[^}]*\} \S+) \S+$", re.MULTILINE)


def generate_openmetrics(registry: CollectorRegistry) -> bytes:
    return _generate_openmetrics(registry)  # type: ignore[no-untyped-call,no-any-return]


def normalised(exposition: bytes) -> str:
    """The exposition with ``_created`` values and exemplar timestamps blanked."""
    text = _CREATED_LINE.sub(r"\1 T", exposition.decode())
    return _EXEMPLAR_TIME.sub(r"\1 T", text)


def samples(registry: CollectorRegistry) -> list[tuple[Any, ...]]:
    """Every sample, in order, with the same two time-of-day values blanked."""
    found = []
    for family in registry.collect():
        for sample in family.samples:
            exemplar = sample.exemplar
            found.append(
                (
                    family.name,
                    family.type,
                    family.documentation,
                    sample.name,
                    sample.labels,
                    "T" if sample.name.endswith("_created") else repr(sample.value),
                    sample.timestamp,
                    None if exemplar is None else (exemplar.labels, repr(exemplar.value)),
                )
            )
    return found


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    return None


def _route(scope: Scope) -> str | None:
    route = scope.get("test.route")
    return route if isinstance(route, str) else None


def scope(method: str = "GET", route: str | None = "/items/{id}", **extra: object) -> Scope:
    made: Scope = {
        "type": "http",
        "method": method,
        "path": "/items/1",
        "root_path": "",
        "headers": [],
        **extra,
    }
    if route is not None:
        made["test.route"] = route
    return made


class Pair(NamedTuple):
    """Two middlewares with the same options: prometheus-client's families, and ours."""

    reference: MetricsMiddleware
    recorder: MetricsMiddleware
    reference_registry: CollectorRegistry
    recorder_registry: CollectorRegistry

    def drive(self, batch: Sequence[Request]) -> None:
        """Record every request of `batch` on both, in turn."""
        for request_scope, status, duration, received, sent, context in batch:
            for middleware in (self.reference, self.recorder):
                middleware.record_request(
                    dict(request_scope), status, duration, received, sent, context
                )

    def assert_same(self) -> None:
        """Both formats byte for byte, and every sample, but for time of day."""
        ours, theirs = self.recorder_registry, self.reference_registry
        assert normalised(generate_latest(ours)) == normalised(generate_latest(theirs))
        assert normalised(generate_openmetrics(ours)) == normalised(generate_openmetrics(theirs))
        assert samples(ours) == samples(theirs)


def pair(**options: Any) -> Pair:
    """The same options on prometheus-client's families (the reference) and on ours."""
    reference_registry = CollectorRegistry()
    labels: Mapping[str, object] = options.get("labels") or {}
    const: Mapping[str, object] = options.get("const_labels") or {}
    # What MetricsMiddleware asks for; any difference makes it raise "other buckets".
    made = http_metrics_for(
        reference_registry,
        options.get("namespace", ""),
        options.get("buckets", DEFAULT_BUCKETS),
        options.get("size_buckets", DEFAULT_SIZE_BUCKETS),
        multiprocess=False,
        dynamic_labels=tuple(labels),
        const_labels=tuple((name, str(v)) for name, v in const.items()),
        instrumentator_compat=options.get("instrumentator_compat", False),
        client_families=True,
    )
    reference = MetricsMiddleware(
        _app, registry=reference_registry, route_resolver=_route, **options
    )
    recorder_registry = CollectorRegistry()
    recorder = MetricsMiddleware(_app, registry=recorder_registry, route_resolver=_route, **options)
    assert reference._metrics is made
    assert reference._metrics.recorder is None
    assert recorder._metrics.recorder is not None
    return Pair(reference, recorder, reference_registry, recorder_registry)


def _context(trace_id: int, *, sampled: bool = True) -> trace.SpanContext:
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(trace_id, 0x1234, is_remote=False, trace_flags=flags)


Request = tuple[Scope, int, float, int, int, "trace.SpanContext | None"]


def requests() -> list[Request]:
    """Methods, statuses, routes, bucket edges, sizes and span contexts worth comparing."""
    tenant_a = {"test.tenant": "a"}
    return [
        (scope(), 200, 0.003, 0, 17, None),
        (scope(), 200, 0.005, 0, 17, None),  # exactly on a bound: that bucket
        (scope(), 201, 0.0051, 100, 100, _context(0xABC)),  # exemplar, sizes on a bound
        (scope(), 201, 0.2, 101, 1_000_001, _context(0xABD, sampled=False)),
        (scope("POST", "/echo", **tenant_a), 500, 11.0, 5_000, 20_000_000, _context(0xF00)),
        (scope("POST", "/echo", **tenant_a), 404, 0.0, 0, 0, _context(0, sampled=True)),
        (scope("FOO"), 200, 0.75, 3, 4, None),  # unknown method: folded
        (scope("GET", None), 404, 0.01, 0, 9, None),  # no route
        (
            scope(
                "OPTIONS",
                None,
                headers=[
                    (b"origin", b"https://a.example"),
                    (b"access-control-request-method", b"PUT"),
                ],
            ),
            200,
            0.001,
            0,
            0,
            None,
        ),
        (scope(), 302, math.inf, 1, 1, _context(0xABE)),
        (scope(), 200, -0.5, 0, 0, None),
        (scope(), 200, math.nan, 0, 0, _context(0xABF)),
        (scope("DELETE", "/items/{id}", **tenant_a), 204, 2.5, 0, 0, _context(0xAC0)),
        (scope(), 200, 0.004, 0, 17, _context(0xAC1)),  # a newer exemplar replaces the first
    ]


def _tenant(request_scope: Scope) -> str | None:
    tenant = request_scope.get("test.tenant")
    if tenant == "boom":
        raise RuntimeError("label bug")
    return tenant if isinstance(tenant, str) else None


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespace and buckets": {
        "namespace": "shop",
        "buckets": (0.005, 0.2, 1.0),
        "size_buckets": (10, 1_000),
    },
    "dynamic and constant labels": {
        "labels": {"tenant": _tenant},
        "const_labels": {"service": "api", "region": "eu"},
    },
    "instrumentator layout": {"instrumentator_compat": True},
    "instrumentator layout with labels": {
        "instrumentator_compat": True,
        "labels": {"tenant": _tenant},
        "const_labels": {"service": "api"},
    },
    "negative first bucket": {"buckets": (-1.0, 0.0, 1.0)},
}


@pytest.mark.parametrize("options", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_both_formats_match_prometheus_client_byte_for_byte(options: dict[str, Any]) -> None:
    both = pair(**options)
    both.assert_same()  # before any request
    batch = requests()
    both.drive(batch[:5])
    both.assert_same()
    both.drive(batch[5:])
    both.assert_same()
    exposition = generate_openmetrics(both.recorder_registry).decode()
    assert 'trace_id="00000000000000000000000000000ac1"' in exposition
    assert "_created" in exposition


def test_exemplars_of_the_current_span_match() -> None:
    both = pair()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        both.drive([(scope(), 200, 0.02, 0, 5, None)])
    both.assert_same()
    trace_id = format(span.get_span_context().trace_id, "032x")
    exposition = generate_openmetrics(both.recorder_registry).decode()
    assert exposition.count(f'trace_id="{trace_id}"') == 2  # request counter and latency bucket


def test_created_samples_follow_prometheus_client_switch() -> None:
    both = pair(instrumentator_compat=True)
    both.drive(requests())
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        assert "_created" not in generate_openmetrics(both.recorder_registry).decode()
        both.assert_same()
    finally:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    assert "_created" in generate_openmetrics(both.recorder_registry).decode()
    both.assert_same()


_ENV_CHILD = """
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from asgi_observe import MetricsMiddleware

async def app(scope, receive, send):
    return None

registry = CollectorRegistry()
middleware = MetricsMiddleware(app, registry=registry)
assert middleware._metrics.recorder is not None
middleware.record_request({"type": "http", "method": "GET", "path": "/"}, 200, 0.1, 0, 0)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_created_samples_follow_the_environment_variable() -> None:
    env = {**os.environ, "PROMETHEUS_DISABLE_CREATED_SERIES": "True", "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    result = subprocess.run(
        [sys.executable, "-c", _ENV_CHILD], env=env, capture_output=True, text=True, check=True
    )
    assert "http_requests_total{" in result.stdout
    assert "_created" not in result.stdout


def test_sample_values_and_the_legacy_document_match() -> None:
    options: dict[str, Any] = {"namespace": "shop", "labels": {"tenant": _tenant}}
    both = pair(**options)
    both.drive(requests())
    reference_registry = both.reference_registry
    recorder_registry = both.recorder_registry
    queries: list[tuple[str, dict[str, str]]] = [
        ("shop_http_requests_total", {"method": "GET", "status": "200", "handler": "/items/{id}", "tenant": ""}),
        ("shop_http_requests_total", {"method": "POST", "status": "500", "handler": "/echo", "tenant": "a"}),
        ("shop_http_requests_total", {"method": "GET", "status": "404", "handler": UNMATCHED_LABEL, "tenant": ""}),
        ("shop_http_requests_total", {"method": "OPTIONS", "status": "200", "handler": PREFLIGHT_LABEL, "tenant": ""}),
        ("shop_http_request_duration_seconds_count", {"method": "GET", "handler": "/items/{id}", "tenant": ""}),
        ("shop_http_request_duration_seconds_sum", {"method": "GET", "handler": "/items/{id}", "tenant": ""}),
        ("shop_http_request_duration_seconds_bucket", {"method": "GET", "handler": "/items/{id}", "tenant": "", "le": "0.005"}),
        ("shop_http_request_size_bytes_bucket", {"handler": "/items/{id}", "le": "100.0"}),
        ("shop_http_response_size_bytes_sum", {"handler": "/echo"}),
        ("shop_http_requests_total", {"method": "PUT", "status": "200", "handler": "/items/{id}", "tenant": ""}),
    ]  # fmt: skip
    answers = [recorder_registry.get_sample_value(name, labels) for name, labels in queries]
    expected = [reference_registry.get_sample_value(name, labels) for name, labels in queries]
    assert list(map(repr, answers)) == list(map(repr, expected))  # a NaN sum included
    assert answers[0] == 5
    assert answers[-1] is None
    ours = legacy_snapshot(recorder_registry, namespace="shop")
    theirs = legacy_snapshot(reference_registry, namespace="shop")
    del ours["timestamp"], theirs["timestamp"]
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    assert ours["api_metrics"]["requests"] == len(requests())


def test_a_label_function_that_raises_gives_the_same_series() -> None:
    both = pair(labels={"tenant": _tenant})
    both.drive([(scope(**{"test.tenant": "boom"}), 200, 0.1, 0, 0, None)])
    both.assert_same()
    assert (
        value(
            both.recorder_registry,
            "http_requests_total",
            method="GET",
            status="200",
            handler="/items/{id}",
            tenant="",
        )
        == 1
    )


def _registering_first(make: Callable[[CollectorRegistry], object]) -> CollectorRegistry:
    registry = CollectorRegistry()
    make(registry)
    return registry


@pytest.mark.parametrize(
    "existing",
    [
        lambda registry: Counter("http_requests_total", "theirs", registry=registry),
        lambda registry: Histogram("http_response_size_bytes", "theirs", registry=registry),
    ],
    ids=["request counter", "response size histogram"],
)
def test_a_name_taken_by_another_metric_gives_prometheus_client_error(
    existing: Callable[[CollectorRegistry], object],
) -> None:
    with pytest.raises(ValueError, match="Duplicated timeseries") as theirs:
        http_metrics_for(
            _registering_first(existing),
            "",
            DEFAULT_BUCKETS,
            DEFAULT_SIZE_BUCKETS,
            multiprocess=False,
            client_families=True,
        )
    registry = _registering_first(existing)
    with pytest.raises(ValueError, match="Duplicated timeseries") as ours:
        MetricsMiddleware(_app, registry=registry)
    assert str(ours.value) == str(theirs.value)
    # Nothing was half-registered: the user's metric is all the registry holds, and
    # asking again gives the same error rather than one about our own families.
    assert [family.documentation for family in registry.collect()] == ["theirs"]
    with pytest.raises(ValueError, match="Duplicated timeseries") as again:
        MetricsMiddleware(_app, registry=registry)
    assert str(again.value) == str(ours.value)


def test_bad_buckets_are_refused_as_prometheus_client_refuses_them() -> None:
    for buckets in ((1.0, 0.5), ()):
        with pytest.raises(ValueError, match="uckets") as theirs:
            Histogram("x", "x", buckets=buckets, registry=None)
        with pytest.raises(ValueError, match="uckets") as ours:
            MetricsMiddleware(_app, registry=CollectorRegistry(), buckets=buckets)
        assert str(ours.value) == str(theirs.value)


def test_middlewares_sharing_a_registry_share_one_recorder(registry: CollectorRegistry) -> None:
    first = MetricsMiddleware(_app, registry=registry, route_resolver=_route)
    second = MetricsMiddleware(_app, registry=registry, route_resolver=_route)
    assert first._metrics.recorder is second._metrics.recorder
    first.record_request(scope(), 200, 0.1, 0, 0)
    second.record_request(scope(), 200, 0.1, 0, 0)
    labels = {"method": "GET", "status": "200", "handler": "/items/{id}"}
    assert value(registry, "http_requests_total", **labels) == 2
    assert [family.name for family in registry.collect()].count("http_requests") == 1


def test_multiprocess_mode_keeps_prometheus_client_families(registry: CollectorRegistry) -> None:
    middleware = MetricsMiddleware(_app, registry=registry, multiprocess=True)
    assert middleware._metrics.recorder is None
    middleware.record_request(scope(), 200, 0.1, 0, 0)
    assert (
        value(registry, "http_requests_total", method="GET", status="200", handler=UNMATCHED_LABEL)
        == 1
    )


_MULTIPROC_CHILD = """
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from asgi_observe import MetricsMiddleware

async def app(scope, receive, send):
    return None

middleware = MetricsMiddleware(app, registry=CollectorRegistry())
assert middleware._metrics.recorder is None, "values must go to the multiprocess files"
middleware.record_request({"type": "http", "method": "GET", "path": "/"}, 200, 0.1, 0, 0)
merged = CollectorRegistry()
MultiProcessCollector(merged)
labels = {"method": "GET", "status": "200", "handler": "none"}
sys.stdout.write(repr(merged.get_sample_value("http_requests_total", labels)))
"""


def test_a_multiprocess_directory_keeps_values_in_its_files(tmp_path: Path) -> None:
    """prometheus-client writes to PROMETHEUS_MULTIPROC_DIR whatever `multiprocess`
    says; the recorder never takes values away from those files."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _MULTIPROC_CHILD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "1.0"


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switch as often as possible, so an unguarded read-modify-write loses counts."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def test_concurrent_recording_loses_no_increment(
    registry: CollectorRegistry, busy_switching: None
) -> None:
    """Threads record the same new series at the same time, each through its own
    middleware (so each creates the series), while another thread scrapes."""
    threads, rounds = 8, 40
    routes = tuple(f"/r{number}" for number in range(50))
    middlewares = [
        MetricsMiddleware(_app, registry=registry, route_resolver=_route) for _ in range(threads)
    ]
    scrapes: list[float] = []
    start = threading.Barrier(threads + 1)

    def work(middleware: MetricsMiddleware) -> None:
        start.wait()
        for _ in range(rounds):
            for route in routes:
                middleware.record_request(scope(route=route), 200, 0.25, 2, 4)

    def scrape() -> None:
        start.wait()
        while any(worker.is_alive() for worker in workers):
            scrapes.append(
                sum(
                    sample.value
                    for family in registry.collect()
                    for sample in family.samples
                    if sample.name == "http_request_duration_seconds_count"
                )
            )

    workers = [threading.Thread(target=work, args=(each,)) for each in middlewares]
    scraper = threading.Thread(target=scrape)
    for thread in (*workers, scraper):
        thread.start()
    for thread in (*workers, scraper):
        thread.join()
    each = threads * rounds
    for route in routes:
        labels = {"method": "GET", "handler": route}
        assert value(registry, "http_requests_total", status="200", **labels) == each
        assert value(registry, "http_request_duration_seconds_count", **labels) == each
        assert value(registry, "http_request_duration_seconds_sum", **labels) == each * 0.25
        assert value(registry, "http_request_duration_seconds_bucket", le="0.25", **labels) == each
        assert value(registry, "http_request_size_bytes_sum", handler=route) == each * 2
        assert value(registry, "http_response_size_bytes_count", handler=route) == each
    assert scrapes
    assert scrapes == sorted(scrapes)  # a scrape never sees a count go back
