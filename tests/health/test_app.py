"""HealthApp over httpx.ASGITransport: endpoints, shapes, methods, caching, metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from asgi_observe.health import Check, HealthApp, checks
from asgi_observe.routes import SUBROUTE_SCOPE_KEY
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class Counter:
    """An async check that counts its runs and can be told to fail or wait."""

    def __init__(self, *, ok: bool = True, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.ok = ok
        self.gate = gate

    async def __call__(self) -> bool:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.ok


def timeless(result: dict[str, Any]) -> dict[str, Any]:
    """A check result without its timing, which depends on the machine."""
    assert isinstance(result["response_ms"], int)
    assert result["response_ms"] >= 0
    return {key: value for key, value in result.items() if key != "response_ms"}


def passing(name: str = "dep", **options: Any) -> Check:
    return Check(name=name, run=Counter(), **options)


async def test_live_shape_and_no_dependency_touched(registry: CollectorRegistry) -> None:
    probe = Counter()
    app = HealthApp({"db": probe}, registry=registry)
    async with client(app) as http:
        response = await http.get("/live")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert list(body) == ["status", "timestamp"]
    assert body["status"] == "live"
    assert ISO_Z.match(body["timestamp"])
    assert probe.calls == 0


async def test_ready_shape_matches_the_seed(registry: CollectorRegistry) -> None:
    app = HealthApp(
        {"database": passing(), "disk": checks.disk("/", warn_percent=99.8, fail_percent=99.9)},
        version="1.0.0",
        registry=registry,
    )
    async with client(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["status", "timestamp", "version", "checks"]
    assert body["status"] == "ready"
    assert body["version"] == "1.0.0"
    assert ISO_Z.match(body["timestamp"])
    assert timeless(body["checks"]["database"]) == {"status": "pass"}
    disk = body["checks"]["disk"]
    assert disk["status"] == "pass"
    assert isinstance(disk["response_ms"], int)
    assert 0 <= disk["usage_percent"] <= 100


async def test_raising_check_is_503_with_its_message_never_500(
    registry: CollectorRegistry,
) -> None:
    async def broken() -> None:
        raise RuntimeError("replica lag too high")

    app = HealthApp({"database": broken, "cache": passing()}, registry=registry)
    async with client(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["status"] == "fail"
    assert body["checks"]["database"]["message"] == "RuntimeError: replica lag too high"
    assert body["checks"]["cache"]["status"] == "pass"


async def test_message_has_no_dsn_password(registry: CollectorRegistry) -> None:
    def connect() -> None:
        raise ConnectionError("cannot reach postgresql://app:s3cr3t-pw@db.internal:5432/app")

    app = HealthApp({"database": connect}, registry=registry)
    async with client(app) as http:
        message = (await http.get("/ready")).json()["checks"]["database"]["message"]
    assert "s3cr3t-pw" not in message
    assert message.startswith("ConnectionError: cannot reach postgresql://")
    assert message.endswith("@db.internal:5432/app")


async def test_optional_check_failing_is_warn_and_ready(registry: CollectorRegistry) -> None:
    app = HealthApp(
        [passing("database"), Check(name="search", run=Counter(ok=False), critical=False)],
        registry=registry,
    )
    async with client(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert timeless(body["checks"]["search"]) == {
        "status": "warn",
        "message": "check returned False",
    }


async def test_check_returning_dict_sets_status_message_and_extras(
    registry: CollectorRegistry,
) -> None:
    async def queue_depth() -> dict[str, object]:
        return {"status": "warn", "message": "queue is deep", "depth": 900, "ratio": float("nan")}

    app = HealthApp({"queue": queue_depth}, registry=registry)
    async with client(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 200
    assert timeless(response.json()["checks"]["queue"]) == {
        "status": "warn",
        "message": "queue is deep",
        "depth": 900,
        "ratio": None,
    }


async def test_no_checks_is_ready(registry: CollectorRegistry) -> None:
    async with client(HealthApp(registry=registry)) as http:
        response = await http.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {}


async def test_legacy_endpoint_reports_service_info(registry: CollectorRegistry) -> None:
    probe = Counter()
    app = HealthApp(
        {"db": probe},
        version="2.3.4",
        environment="production",
        service_name="baliblissed",
        registry=registry,
    )
    async with client(app) as http:
        for path in ("", "/"):
            response = await http.get(path)
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "healthy"
            assert ISO_Z.match(body["timestamp"])
            assert body["version"] == "2.3.4"
            assert body["environment"] == "production"
            assert body["uptime_seconds"] >= 0
            assert body["service"]["name"] == "baliblissed"
            assert body["service"]["instance"]
    assert probe.calls == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/live", "/ready", "/startup"])
async def test_other_methods_are_405(registry: CollectorRegistry, method: str, path: str) -> None:
    probe = Counter()
    app = HealthApp({"db": probe}, registry=registry)
    async with client(app) as http:
        response = await http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"detail": "Method Not Allowed"}
    assert probe.calls == 0


@pytest.mark.parametrize("path", ["/live", "/ready", "/startup", "/"])
async def test_head_has_get_status_and_headers_without_body(
    registry: CollectorRegistry, path: str
) -> None:
    app = HealthApp({"db": passing()}, registry=registry, cache_ttl=60)
    async with client(app) as http:
        get = await http.get(path)
        head = await http.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert head.headers["content-type"] == get.headers["content-type"]


async def test_head_of_failing_readiness_is_503(registry: CollectorRegistry) -> None:
    app = HealthApp({"db": Counter(ok=False)}, registry=registry)
    async with client(app) as http:
        response = await http.head("/ready")
    assert response.status_code == 503
    assert response.content == b""


@pytest.mark.parametrize("path", ["/nope", "/live/extra", "/readyz", "/metrics"])
async def test_unknown_subpath_is_json_404(registry: CollectorRegistry, path: str) -> None:
    async with client(HealthApp(registry=registry)) as http:
        response = await http.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_trailing_slash_is_accepted(registry: CollectorRegistry) -> None:
    async with client(HealthApp(registry=registry)) as http:
        response = await http.get("/live/")
    assert response.status_code == 200
    assert response.json()["status"] == "live"


async def test_startup_runs_until_passed_once_then_stays_200(registry: CollectorRegistry) -> None:
    migrations = Counter(ok=False)
    app = HealthApp(
        {"db": passing()},
        startup_checks={"migrations": migrations},
        registry=registry,
        cache_ttl=0,
    )
    async with client(app) as http:
        first = await http.get("/startup")
        assert first.status_code == 503
        assert first.json()["status"] == "starting"
        assert first.json()["checks"]["migrations"]["status"] == "fail"
        migrations.ok = True
        second = await http.get("/startup")
        assert second.status_code == 200
        assert second.json()["status"] == "started"
        migrations.ok = False
        calls = migrations.calls
        third = await http.get("/startup")
    assert third.status_code == 200
    assert third.json()["status"] == "started"
    assert "checks" not in third.json()
    assert migrations.calls == calls  # not run again once started


async def test_startup_defaults_to_critical_readiness_checks(registry: CollectorRegistry) -> None:
    database = Counter(ok=False)
    optional = Counter(ok=False)
    app = HealthApp(
        [
            Check(name="db", run=database),
            Check(name="search", run=optional, critical=False),
        ],
        registry=registry,
        cache_ttl=0,
    )
    async with client(app) as http:
        assert (await http.get("/startup")).status_code == 503
        database.ok = True
        assert (await http.get("/ready")).status_code == 200  # a ready answer counts
        calls = database.calls
        response = await http.get("/startup")
    assert response.status_code == 200
    assert database.calls == calls


async def test_readiness_results_are_cached_for_the_ttl(registry: CollectorRegistry) -> None:
    probe = Counter()
    app = HealthApp({"db": probe}, registry=registry, cache_ttl=60)
    async with client(app) as http:
        for _ in range(5):
            assert (await http.get("/ready")).status_code == 200
    assert probe.calls == 1


async def test_cache_ttl_zero_evaluates_every_probe(registry: CollectorRegistry) -> None:
    probe = Counter()
    app = HealthApp({"db": probe}, registry=registry, cache_ttl=0)
    async with client(app) as http:
        for _ in range(3):
            await http.get("/ready")
    assert probe.calls == 3


async def test_cache_expires(registry: CollectorRegistry) -> None:
    probe = Counter()
    app = HealthApp({"db": probe}, registry=registry, cache_ttl=0.05)
    async with client(app) as http:
        await http.get("/ready")
        deadline = time.monotonic() + 5
        while probe.calls < 2 and time.monotonic() < deadline:
            await http.get("/ready")
            await asyncio.sleep(0.01)
    assert probe.calls == 2


@pytest.mark.parametrize("ttl", [0.0, 1.0])
async def test_100_concurrent_probes_share_one_evaluation(
    registry: CollectorRegistry, ttl: float
) -> None:
    gate = asyncio.Event()
    database, cache = Counter(gate=gate), Counter(gate=gate)
    app = HealthApp({"database": database, "cache": cache}, registry=registry, cache_ttl=ttl)
    arrived = 0
    all_arrived = asyncio.Event()

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 100:
            all_arrived.set()
        await app(scope, receive, send)

    async def release_when_all_arrived() -> None:
        await all_arrived.wait()
        gate.set()

    async with client(counting) as http:
        responses, _ = await asyncio.gather(
            asyncio.gather(*(http.get("/ready") for _ in range(100))),
            release_when_all_arrived(),
        )
    assert [r.status_code for r in responses] == [200] * 100
    assert database.calls == 1
    assert cache.calls == 1


async def test_cancelled_probe_does_not_cancel_the_shared_evaluation(
    registry: CollectorRegistry,
) -> None:
    gate = asyncio.Event()
    probe = Counter(gate=gate)
    app = HealthApp({"db": probe}, registry=registry, cache_ttl=0)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    def scope() -> Scope:
        return {"type": "http", "method": "GET", "path": "/ready", "root_path": "", "headers": []}

    first = asyncio.ensure_future(app(scope(), receive, send))
    second = asyncio.ensure_future(app(scope(), receive, send))
    await probe.entered.wait()
    first.cancel()
    gate.set()
    await second
    assert first.cancelled()
    assert sent[0]["status"] == 200
    assert probe.calls == 1


async def test_probe_is_bounded_by_the_largest_timeout(registry: CollectorRegistry) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    async def ignores_cancellation() -> None:
        for _ in range(8):
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    app = HealthApp(
        [
            Check(name="db", run=hangs, timeout=0.3),
            Check(name="stubborn", run=ignores_cancellation, timeout=0.2),
            passing("cache"),
        ],
        registry=registry,
    )
    start = time.perf_counter()
    async with client(app) as http:
        response = await http.get("/ready")
    elapsed = time.perf_counter() - start
    assert response.status_code == 503
    assert 0.3 <= elapsed < 0.3 + 0.25
    body = response.json()["checks"]
    assert body["db"]["status"] == "fail"
    assert body["db"]["message"] == "TimeoutError: no answer within 0.3s"
    assert 300 <= body["db"]["response_ms"] < 550
    assert body["stubborn"]["status"] == "fail"
    assert body["cache"]["status"] == "pass"


async def test_health_json_format_for_readiness(registry: CollectorRegistry) -> None:
    app = HealthApp(
        {
            "database": passing(component_type="datastore"),
            "search": Check(name="search", run=Counter(ok=False), critical=False),
            "disk": checks.disk("/", warn_percent=99.8, fail_percent=99.9),
        },
        version="1.0.0",
        service_name="baliblissed",
        registry=registry,
    )
    async with client(app) as http:
        response = await http.get(
            "/ready", headers={"accept": "application/health+json, application/json;q=0.5"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    body = response.json()
    assert body["status"] == "warn"
    assert body["version"] == "1.0.0"
    assert body["serviceId"] == "baliblissed"
    database = body["checks"]["database:responseTime"]
    assert isinstance(database, list)
    assert database[0]["componentType"] == "datastore"
    assert database[0]["observedUnit"] == "ms"
    assert database[0]["status"] == "pass"
    assert isinstance(database[0]["observedValue"], int)
    assert ISO_Z.match(database[0]["time"])
    assert "output" not in database[0]
    search = body["checks"]["search:responseTime"][0]
    assert search["status"] == "warn"
    assert search["output"] == "check returned False"
    disk = body["checks"]["disk:utilization"][0]
    assert disk["observedUnit"] == "percent"
    assert disk["componentType"] == "system"
    assert 0 <= disk["observedValue"] <= 100


async def test_health_json_failing_is_fail_and_503(registry: CollectorRegistry) -> None:
    app = HealthApp({"db": Counter(ok=False)}, registry=registry)
    async with client(app) as http:
        response = await http.get("/ready", headers={"accept": "application/health+json"})
    assert response.status_code == 503
    assert response.json()["status"] == "fail"
    assert response.json()["checks"]["db:responseTime"][0]["output"] == "check returned False"


@pytest.mark.parametrize("path", ["/live", "/", "/startup"])
async def test_health_json_for_other_endpoints(registry: CollectorRegistry, path: str) -> None:
    async with client(HealthApp(version="9", registry=registry)) as http:
        response = await http.get(path, headers={"accept": "application/health+json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.json()["status"] == "pass"
    assert response.json()["version"] == "9"


async def test_readiness_feeds_metrics(registry: CollectorRegistry) -> None:
    app = HealthApp(
        [
            passing("db"),
            Check(name="cache", run=Counter(ok=False)),
            Check(name="search", run=Counter(ok=False), critical=False),
        ],
        registry=registry,
    )
    async with client(app) as http:
        await http.get("/ready")
    assert registry.get_sample_value("health_check_status", {"check": "db"}) == 1
    assert registry.get_sample_value("health_check_status", {"check": "cache"}) == 0
    assert registry.get_sample_value("health_check_status", {"check": "search"}) == 1  # warn
    duration = registry.get_sample_value("health_check_duration_seconds", {"check": "db"})
    assert duration is not None
    assert 0 < duration < 1  # unrounded: a sub-millisecond check is not reported as 0


async def test_two_apps_share_one_registry(registry: CollectorRegistry) -> None:
    first = HealthApp({"a": passing()}, registry=registry)
    second = HealthApp({"b": Counter(ok=False)}, registry=registry)
    async with client(first) as one, client(second) as two:
        await one.get("/ready")
        await two.get("/ready")
    assert registry.get_sample_value("health_check_status", {"check": "a"}) == 1
    assert registry.get_sample_value("health_check_status", {"check": "b"}) == 0


def test_default_registry_can_host_many_apps() -> None:
    first = HealthApp({"a": passing()})
    second = HealthApp({"a": passing()})
    assert first.checks[0].name == second.checks[0].name == "a"


async def test_subroute_is_recorded_for_route_templates(registry: CollectorRegistry) -> None:
    app = HealthApp(registry=registry)
    seen: list[object] = []

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        seen.append(scope.get(SUBROUTE_SCOPE_KEY, "unset"))

    async with client(spy) as http:
        for path in ("/", "/live", "/ready", "/startup", "/nope"):
            await http.get(path)
    assert seen == ["", "/live", "/ready", "/startup", "unset"]


@pytest.mark.parametrize(
    ("root_path", "path", "expected"),
    [
        ("/health", "/health/live", "live"),  # Starlette 1.x and the ASGI spec
        ("/health", "/live", "live"),  # a dispatcher that strips the prefix
        ("/api/health", "/api/health/ready", "ready"),
        ("/health", "/health", "healthy"),
        ("/health", "/healthz/live", "404"),
    ],
)
async def test_mount_point_from_root_path(
    registry: CollectorRegistry, root_path: str, path: str, expected: str
) -> None:
    app = HealthApp(registry=registry)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "headers": [],
    }
    await app(scope, receive, send)
    if expected == "404":
        assert sent[0]["status"] == 404
    else:
        assert sent[0]["status"] == 200
        assert f'"status":"{expected}"'.encode() in sent[1]["body"]


async def test_lifespan_completes_startup_and_shutdown(registry: CollectorRegistry) -> None:
    app = HealthApp(registry=registry)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), timeout=5)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_websocket_is_closed_politely(registry: CollectorRegistry) -> None:
    app = HealthApp(registry=registry)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "websocket", "path": "/live", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1000}]


@pytest.mark.parametrize(
    ("checks_arg", "error"),
    [
        ({"a": 42}, TypeError),
        ("database", TypeError),
        ([Check(name="a", run=Counter()), Check(name="a", run=Counter())], ValueError),
    ],
)
def test_invalid_checks_are_rejected_at_construction(
    registry: CollectorRegistry, checks_arg: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        HealthApp(checks_arg, registry=registry)


@pytest.mark.parametrize("ttl", [-1, "1", True])
def test_invalid_cache_ttl_is_rejected(registry: CollectorRegistry, ttl: Any) -> None:
    with pytest.raises(ValueError, match="cache_ttl"):
        HealthApp(registry=registry, cache_ttl=ttl)


def test_mapping_key_renames_a_check(registry: CollectorRegistry) -> None:
    app = HealthApp({"primary": checks.disk("/")}, registry=registry)
    assert [check.name for check in app.checks] == ["primary"]


async def test_our_own_failure_is_a_503_not_an_exception(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = HealthApp({"db": passing()}, registry=registry)

    def explode(*args: Any, **kwargs: Any) -> Awaitable[Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(app._readiness, "evaluate", explode)
    async with client(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


async def test_liveness_is_fast_in_process(registry: CollectorRegistry) -> None:
    app = HealthApp({"db": passing()}, registry=registry)
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/live",
        "root_path": "",
        "headers": [],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        await app(dict(scope), receive, send)
    per_request = (time.perf_counter() - start) / rounds
    assert per_request < 0.0005  # "well under a millisecond", with room for a busy machine
