"""AppMetrics: the seed's application metrics, label guard and get-or-create."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from asgi_observe.metrics.app import AppMetrics, CircuitState, check_label_names
from tests.metrics.helpers import label_values, value


def test_cache_hits_and_misses(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)
    metrics.cache_hit()
    metrics.cache_hit(2)
    metrics.cache_miss()
    assert value(registry, "baliblissed_cache_hits_total") == 3
    assert value(registry, "baliblissed_cache_misses_total") == 1


def test_families_exist_before_first_use(registry: CollectorRegistry) -> None:
    AppMetrics("baliblissed", registry=registry)
    text = generate_latest(registry).decode()
    for name, kind in [
        ("cache_hits_total", "counter"),
        ("cache_misses_total", "counter"),
        ("ai_requests_total", "counter"),
        ("ai_request_duration_seconds", "histogram"),
        ("ai_tokens_used_total", "counter"),
        ("circuit_breaker_state", "gauge"),
        ("rate_limit_hits_total", "counter"),
    ]:
        assert f"# TYPE baliblissed_{name} {kind}" in text, name
    assert "baliblissed_cache_hits_total 0.0" in text  # a hit-rate query has a denominator


def test_track_ai_context_manager(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)
    with metrics.track_ai("itinerary") as call:
        call.tokens(120)
        call.tokens(30)
    labels = {"request_type": "itinerary"}
    assert value(registry, "baliblissed_ai_requests_total", **labels) == 1
    assert value(registry, "baliblissed_ai_tokens_used_total", **labels) == 150
    assert value(registry, "baliblissed_ai_request_duration_seconds_count", **labels) == 1
    assert value(registry, "baliblissed_ai_request_failures_total", **labels) == 0


async def test_track_ai_async_context_manager_counts_failures(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)

    async def failing_call() -> None:
        async with metrics.track_ai("chat") as call:
            call.tokens(5)
            await asyncio.sleep(0)
            raise TimeoutError

    with pytest.raises(TimeoutError):
        await failing_call()
    labels = {"request_type": "chat"}
    assert value(registry, "baliblissed_ai_requests_total", **labels) == 1
    assert value(registry, "baliblissed_ai_request_failures_total", **labels) == 1
    assert value(registry, "baliblissed_ai_tokens_used_total", **labels) == 5


def test_track_ai_decorator_sync(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("ns", registry=registry)

    @metrics.track_ai("summary", tokens_from=len)
    def summarise(text: str) -> str:
        """Docstring kept."""
        return text.upper()

    assert summarise("abcd") == "ABCD"
    assert summarise("ab") == "AB"
    assert summarise.__doc__ == "Docstring kept."
    assert value(registry, "ns_ai_requests_total", request_type="summary") == 2
    assert value(registry, "ns_ai_tokens_used_total", request_type="summary") == 6


async def test_track_ai_decorator_async_and_concurrent(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("ns", registry=registry)

    @metrics.track_ai("embed", tokens_from=lambda n: n)
    async def embed(n: int) -> int:
        await asyncio.sleep(0.01 * (n % 3))
        return n

    assert asyncio.iscoroutinefunction(embed)
    results = await asyncio.gather(*(embed(i) for i in range(50)))
    assert results == list(range(50))
    assert value(registry, "ns_ai_requests_total", request_type="embed") == 50
    assert value(registry, "ns_ai_tokens_used_total", request_type="embed") == sum(range(50))
    assert value(registry, "ns_ai_request_duration_seconds_count", request_type="embed") == 50


async def test_decorated_async_failure_is_counted_and_reraised(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("ns", registry=registry)
    error = RuntimeError("model down")

    @metrics.track_ai("chat")
    async def chat() -> None:
        raise error

    with pytest.raises(RuntimeError) as info:
        await chat()
    assert info.value is error
    assert value(registry, "ns_ai_request_failures_total", request_type="chat") == 1


def test_negative_tokens_are_refused(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("ns", registry=registry)
    with metrics.track_ai("x") as call, pytest.raises(ValueError, match="negative"):
        call.tokens(-1)
    with pytest.raises(ValueError, match="negative"):
        metrics.ai_tokens("x", -3)
    metrics.ai_tokens("x", 4)
    assert value(registry, "ns_ai_tokens_used_total", request_type="x") == 4


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (CircuitState.CLOSED, 0),
        (CircuitState.OPEN, 1),
        (CircuitState.HALF_OPEN, 2),
        ("open", 1),
        ("half-open", 2),
        ("HALF_OPEN", 2),
        ("closed", 0),
        (2, 2),
    ],
)
def test_circuit_breaker_state(
    registry: CollectorRegistry, state: CircuitState | int | str, expected: int
) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)
    metrics.set_circuit_state("ai_circuit_breaker", state)
    assert (
        value(registry, "baliblissed_circuit_breaker_state", breaker_name="ai_circuit_breaker")
        == expected
    )


@pytest.mark.parametrize("bad", ["ajar", 3, -1, True, "", None])
def test_invalid_circuit_states_are_refused(registry: CollectorRegistry, bad: object) -> None:
    metrics = AppMetrics("ns", registry=registry)
    with pytest.raises(ValueError, match="circuit breaker state"):
        metrics.set_circuit_state("b", bad)  # type: ignore[arg-type]


def test_rate_limit_hits(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("baliblissed", registry=registry)
    metrics.rate_limit_hit("/api/chat")
    metrics.rate_limit_hit("/api/chat", 2)
    assert value(registry, "baliblissed_rate_limit_hits_total", endpoint="/api/chat") == 3


def test_label_values_are_capped(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("ns", registry=registry, max_label_values=3)
    for i in range(10):
        metrics.rate_limit_hit(f"/users/{i}")
    seen = label_values(registry, "ns_rate_limit_hits_total", "endpoint")
    assert seen == {"/users/0", "/users/1", "/users/2", "other"}
    assert value(registry, "ns_rate_limit_hits_total", endpoint="other") == 7


def test_construction_is_get_or_create(registry: CollectorRegistry) -> None:
    first = AppMetrics("baliblissed", registry=registry)
    second = AppMetrics("baliblissed", registry=registry)  # no "Duplicated timeseries"
    first.cache_hit()
    second.cache_hit()
    assert value(registry, "baliblissed_cache_hits_total") == 2
    AppMetrics("other", registry=registry).cache_hit()
    assert value(registry, "other_cache_hits_total") == 1


@pytest.mark.parametrize(
    "label",
    ["user_id", "userId", "USER_ID", "session_id", "request_id", "email", "full_path", "ip",
     "client_ip", "url", "trace_id", "path"],
)  # fmt: skip
def test_unbounded_label_names_are_refused(registry: CollectorRegistry, label: str) -> None:
    metrics = AppMetrics("ns", registry=registry)
    with pytest.raises(ValueError, match=f"label '{label}' of metric 'ns_logins_total' is refused"):
        metrics.counter("logins_total", "Logins", (label,))
    with pytest.raises(ValueError, match="refused"):
        check_label_names(["plan", label])


@pytest.mark.parametrize("labels", [("bad name",), ("1st",), ("plan", "plan")])
def test_malformed_label_names_are_refused(labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="label name"):
        check_label_names(labels)


def test_a_string_is_not_a_list_of_labels() -> None:
    with pytest.raises(TypeError, match="sequence"):
        check_label_names("plan")


def test_custom_families_are_guarded_get_or_create(registry: CollectorRegistry) -> None:
    metrics = AppMetrics("shop", registry=registry)
    orders = metrics.counter("orders_total", "Orders", ("plan",))
    orders.child("gold").inc()
    metrics.counter("orders_total", "Orders", ("plan",)).child("gold").inc()
    assert value(registry, "shop_orders_total", plan="gold") == 2
    with pytest.raises(ValueError, match="cannot be redefined"):
        metrics.gauge("orders_total", "Orders", ("plan",))
    with pytest.raises(ValueError, match="cannot be redefined"):
        metrics.counter("orders_total", "Orders", ("tier",))
    queue = metrics.gauge("queue_depth", "Jobs waiting")
    queue.set(4)
    latency = metrics.histogram("job_seconds", "Job latency", buckets=(1, 2))
    latency.observe(1.5)
    metrics.counter("jobs_total", "Jobs").inc()
    assert value(registry, "shop_queue_depth") == 4
    assert value(registry, "shop_job_seconds_bucket", le="2.0") == 1
    assert value(registry, "shop_jobs_total") == 1


def test_invalid_namespace_is_refused(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="namespace"):
        AppMetrics("bali-blissed", registry=registry)
