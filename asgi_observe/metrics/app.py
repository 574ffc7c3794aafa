"""Application metrics of the seed, one line each: cache, AI calls, circuit breakers, rate limits.

`AppMetrics` owns these families under a namespace (``baliblissed`` in the reference
service):

| metric | type | labels |
| --- | --- | --- |
| ``<ns>_cache_hits_total`` / ``<ns>_cache_misses_total`` | counter | - |
| ``<ns>_ai_requests_total`` | counter | ``request_type`` |
| ``<ns>_ai_request_failures_total`` | counter | ``request_type`` |
| ``<ns>_ai_request_duration_seconds`` | histogram | ``request_type`` |
| ``<ns>_ai_tokens_used_total`` | counter | ``request_type`` |
| ``<ns>_circuit_breaker_state`` | gauge (closed 0, open 1, half-open 2) | ``breaker_name`` |
| ``<ns>_rate_limit_hits_total`` | counter | ``endpoint`` |

It also makes custom families (`AppMetrics.counter`, `.gauge`, `.histogram`) through the
same cardinality guard: label names that are unbounded by nature (``user_id``,
``session_id``, ``request_id``, ``email``, ``full_path``, ``ip``...) are refused, and the
values of every label are capped. Families are get-or-create per registry, so building
`AppMetrics` twice never raises "Duplicated timeseries".
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from asgi_observe.metrics._ai_call import AICall
from asgi_observe.metrics._per_registry import PerRegistry
from asgi_observe.routes import LabelCap

__all__ = [
    "AI_DURATION_BUCKETS",
    "FORBIDDEN_LABELS",
    "AICall",
    "AppMetrics",
    "CircuitState",
    "check_label_names",
]

P = ParamSpec("P")
R = TypeVar("R")

AI_DURATION_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""External/AI call latency buckets: model calls take seconds, not milliseconds."""

FORBIDDEN_LABELS: frozenset[str] = frozenset(
    {
        "userid", "user", "username", "useremail", "customerid", "accountid",
        "sessionid", "session", "sessiontoken",
        "requestid", "correlationid", "traceid", "spanid", "transactionid",
        "email", "emailaddress", "phone", "phonenumber",
        "fullpath", "rawpath", "path", "url", "uri", "querystring", "query",
        "ip", "ipaddress", "clientip", "remoteaddr", "remoteip", "useragent",
        "token", "apikey", "authorization", "cookie", "password",
    }
)  # fmt: skip
"""Label names refused by `check_label_names`, compared without case or underscores."""

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _fold(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def check_label_names(labelnames: Sequence[str], *, metric: str = "") -> tuple[str, ...]:
    """Refuse label names that carry unbounded or personal values; return them as a tuple.

    The seed's cardinality rule: ``user_id``, ``session_id``, ``request_id``, ``email`` and
    ``full_path`` are never labels. Variants (``userId``, ``client_ip``, ``url``) are caught
    by comparing names without case and underscores. Use a bounded attribute instead (a
    route template, a plan tier, a status class), or put the value in a log line or span.
    """
    names = tuple(labelnames)
    if isinstance(labelnames, str):
        msg = f"label names must be a sequence of strings, not the string {labelnames!r}"
        raise TypeError(msg)
    where = f" of metric {metric!r}" if metric else ""
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            msg = f"invalid label name {name!r}{where}"
            raise ValueError(msg)
        if _fold(name) in FORBIDDEN_LABELS:
            msg = (
                f"label {name!r}{where} is refused: its values are unbounded or personal "
                "(user, session and request ids, emails, raw paths, IPs...) and would "
                "explode the number of series; use a bounded label such as a route "
                "template, or put the value in logs or spans"
            )
            raise ValueError(msg)
    if len(set(names)) != len(names):
        msg = f"duplicate label names{where}: {names!r}"
        raise ValueError(msg)
    return names


class CircuitState(enum.IntEnum):
    """Circuit breaker states with the seed's gauge values."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @classmethod
    def parse(cls, value: CircuitState | int | str) -> CircuitState:
        """Accept the enum, its value, or a name such as ``"open"`` or ``"half-open"``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_").replace(" ", "_")
            try:
                return cls[key]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        msg = f"invalid circuit breaker state {value!r}: expected closed, open or half-open"
        raise ValueError(msg)


class _Family:
    """A metric family plus the cap on the values of its labels."""

    def __init__(
        self,
        metric: Counter | Gauge | Histogram,
        kind: str,
        labels: tuple[str, ...],
        spec: Any,
        cap: int,
    ) -> None:
        self.metric = metric
        self.kind = kind
        self.labels = labels
        self.spec = spec
        self.caps = tuple(LabelCap(cap, what=f"values of label {label!r}") for label in labels)

    def child(self, *values: str) -> Any:
        if not self.caps:
            return self.metric
        bounded = [cap.bound(str(value)) for cap, value in zip(self.caps, values, strict=True)]
        return self.metric.labels(*bounded)


_families: PerRegistry[_Family] = PerRegistry()


class AppMetrics:
    """The seed's application metrics under `namespace`, plus guarded custom families.

    Args:
        namespace: prefix of every name (``"baliblissed"`` → ``baliblissed_cache_hits_total``).
        registry: where the families live (default: prometheus-client's global registry).
        ai_buckets: latency buckets of ``<ns>_ai_request_duration_seconds``.
        max_label_values: bound on distinct values per label; later new values are
            reported as ``other`` (guards against ``endpoint=request.url.path``).

    Families are shared by every `AppMetrics` of the same registry and namespace. Under
    ``PROMETHEUS_MULTIPROC_DIR`` counters and histograms are summed across workers and
    the circuit breaker gauge reports the most recent state set by a live worker.
    """

    def __init__(
        self,
        namespace: str = "",
        *,
        registry: CollectorRegistry | None = None,
        ai_buckets: Sequence[float] = AI_DURATION_BUCKETS,
        max_label_values: int = 100,
    ) -> None:
        if namespace and not _NAME.match(namespace):
            msg = f"invalid metrics namespace {namespace!r}: use letters, digits and underscores"
            raise ValueError(msg)
        self.namespace = namespace
        self.registry = REGISTRY if registry is None else registry
        self._max_values = max_label_values
        self._cache_hits = self.counter("cache_hits_total", "Cache lookups that found a value")
        self._cache_misses = self.counter("cache_misses_total", "Cache lookups that found nothing")
        self._ai_requests = self.counter(
            "ai_requests_total", "External/AI API requests", ("request_type",)
        )
        self._ai_failures = self.counter(
            "ai_request_failures_total", "External/AI API requests that raised", ("request_type",)
        )
        self._ai_duration = self.histogram(
            "ai_request_duration_seconds",
            "External/AI API request latency",
            ("request_type",),
            buckets=ai_buckets,
        )
        self._ai_tokens = self.counter(
            "ai_tokens_used_total", "Tokens used by external/AI API requests", ("request_type",)
        )
        self._breakers = self.gauge(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            ("breaker_name",),
            multiprocess_mode="livemostrecent",
        )
        self._rate_limits = self.counter(
            "rate_limit_hits_total", "Requests refused by a rate limit", ("endpoint",)
        )

    # -- the seed's metrics ----------------------------------------------------------

    def cache_hit(self, count: int = 1) -> None:
        """Count `count` cache hits."""
        self._cache_hits.inc(count)

    def cache_miss(self, count: int = 1) -> None:
        """Count `count` cache misses."""
        self._cache_misses.inc(count)

    def track_ai(
        self, request_type: str, *, tokens_from: Callable[[Any], int | None] | None = None
    ) -> AICall:
        """Measure an external/AI call: ``with m.track_ai("chat") as call: ...; call.tokens(n)``.

        Also a decorator (``@m.track_ai("chat", tokens_from=lambda r: r.usage.total_tokens)``)
        for plain and ``async def`` functions.
        """
        return AICall(self, request_type, tokens_from)

    def record_ai_call(
        self, request_type: str, duration: float, tokens: int, *, failed: bool
    ) -> None:
        """Count one finished external/AI call (what `track_ai` does on exit)."""
        self._ai_requests.child(request_type).inc()
        self._ai_duration.child(request_type).observe(duration)
        if tokens:
            self._ai_tokens.child(request_type).inc(tokens)
        if failed:
            self._ai_failures.child(request_type).inc()

    def ai_tokens(self, request_type: str, count: int) -> None:
        """Add tokens used outside a tracked call (e.g. reported later by a stream)."""
        if count < 0:
            msg = f"token count must not be negative, got {count}"
            raise ValueError(msg)
        self._ai_tokens.child(request_type).inc(count)

    def set_circuit_state(self, breaker_name: str, state: CircuitState | int | str) -> None:
        """Record the state of a circuit breaker (closed 0, open 1, half-open 2)."""
        self._breakers.child(breaker_name).set(int(CircuitState.parse(state)))

    def rate_limit_hit(self, endpoint: str, count: int = 1) -> None:
        """Count a request refused by a rate limit; `endpoint` should be a route template."""
        self._rate_limits.child(endpoint).inc(count)

    # -- custom families -------------------------------------------------------------

    def counter(
        self, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> _BoundFamily:
        """Get or create a counter ``<ns>_<name>``; refuses unbounded label names."""
        return self._family("counter", name, documentation, labelnames, ())

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        multiprocess_mode: str = "livemostrecent",
    ) -> _BoundFamily:
        """Get or create a gauge ``<ns>_<name>``; refuses unbounded label names."""
        return self._family("gauge", name, documentation, labelnames, multiprocess_mode)

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> _BoundFamily:
        """Get or create a histogram ``<ns>_<name>``; refuses unbounded label names."""
        return self._family(
            "histogram", name, documentation, labelnames, tuple(float(b) for b in buckets)
        )

    def _family(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str], spec: Any
    ) -> _BoundFamily:
        full = f"{self.namespace}_{name}" if self.namespace else name
        labels = check_label_names(labelnames, metric=full)
        registry = self.registry

        def create() -> _Family:
            metric: Counter | Gauge | Histogram
            if kind == "counter":
                metric = Counter(full, documentation, labels, registry=registry)
            elif kind == "gauge":
                metric = Gauge(
                    full, documentation, labels, registry=registry, multiprocess_mode=spec
                )
            else:
                metric = Histogram(full, documentation, labels, registry=registry, buckets=spec)
            return _Family(metric, kind, labels, spec, self._max_values)

        def conflict(existing: Hashable) -> str:
            return (
                f"metric {full!r} already exists in this registry as (kind, labels, spec)="
                f"{existing!r}; it cannot be redefined"
            )

        family = _families.get_or_create(registry, full, (kind, labels, spec), create, conflict)
        return _BoundFamily(family)


class _BoundFamily:
    """A family handed out by `AppMetrics`: ``.child(*label_values)`` or the metric itself."""

    def __init__(self, family: _Family) -> None:
        self._family = family
        self.metric = family.metric

    def child(self, *label_values: str) -> Any:
        """The child for `label_values` (each capped), or the metric when it has no labels."""
        return self._family.child(*label_values)

    def inc(self, amount: float = 1) -> None:
        """Increment an unlabelled counter or gauge."""
        self.metric.inc(amount)  # type: ignore[union-attr]

    def set(self, value: float) -> None:
        """Set an unlabelled gauge."""
        self.metric.set(value)  # type: ignore[union-attr]

    def observe(self, value: float) -> None:
        """Observe a value on an unlabelled histogram."""
        self.metric.observe(value)  # type: ignore[union-attr]
