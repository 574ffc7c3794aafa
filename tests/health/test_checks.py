"""The built-in checks and the check runner, without Redis or PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from asgi_observe import Settings, instrument
from asgi_observe.health import Check, HealthApp, checks
from asgi_observe.health._check import run_check, sanitize_message
from asgi_observe.types import Receive, Scope, Send
from tests.support import black_hole, drive_lifespan, refused_port, run_uvicorn, wait_until


async def test_async_callable_passes() -> None:
    async def ok() -> bool:
        return True

    result = await run_check(checks.callable(ok))
    assert result.name == "ok"
    assert result.status == "pass"
    assert result.message is None


@pytest.mark.parametrize(
    ("returned", "status", "message"),
    [
        (None, "pass", None),
        (True, "pass", None),
        (False, "fail", "check returned False"),
        ({"status": "ok"}, "pass", None),
        ({"status": "degraded", "message": "slow"}, "warn", "slow"),
        ({"status": False}, "fail", None),
        ({"status": "bogus"}, "fail", "unknown status 'bogus'"),
        (17, "pass", None),
    ],
)
async def test_sync_callable_return_values(
    returned: object, status: str, message: str | None
) -> None:
    def check() -> object:
        return returned

    result = await run_check(checks.callable(check, name="value"))
    assert result.status == status
    assert result.message == message


async def test_sync_callable_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def blocking() -> bool:
        ran_on.append(threading.get_ident())
        time.sleep(0.2)
        return True

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.ensure_future(ticker())
    result = await run_check(checks.callable(blocking))
    ticking.cancel()
    assert result.status == "pass"
    assert ran_on
    assert ran_on[0] != loop_thread
    assert ticks >= 5  # the loop kept running while the function blocked


async def test_hanging_sync_check_fails_at_its_timeout_with_one_thread() -> None:
    release = threading.Event()

    def stuck() -> bool:
        release.wait(30)
        return True

    check = checks.callable(stuck, timeout=0.15)
    try:
        for _ in range(3):
            start = time.perf_counter()
            result = await run_check(check)
            elapsed = time.perf_counter() - start
            assert result.status == "fail"
            assert result.message == "TimeoutError: no answer within 0.15s"
            assert 0.15 <= elapsed < 0.4
        stuck_threads = [t for t in threading.enumerate() if t.name == "asgi_observe-health-stuck"]
        assert len(stuck_threads) == 1
        assert stuck_threads[0].daemon
    finally:
        release.set()
    wait_until(
        lambda: not any(t.name == "asgi_observe-health-stuck" for t in threading.enumerate()),
        timeout=5,
        what="the stuck check thread to finish",
    )
    assert (await run_check(check)).status == "pass"


async def test_raising_sync_check_reports_type_and_text() -> None:
    def boom() -> None:
        raise OSError("disk on fire, ask ops@example.com")

    result = await run_check(checks.callable(boom))
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("OSError: disk on fire")
    assert "ops@example.com" not in result.message  # PII redaction applies


async def test_exception_without_text_reports_its_type() -> None:
    async def boom() -> None:
        raise KeyError

    result = await run_check(checks.callable(boom))
    assert result.message == "KeyError"


async def test_check_cancelled_from_inside_is_a_fail() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    result = await run_check(Check(name="c", run=cancelled))
    assert result.status == "fail"
    assert result.message is not None
    assert "CancelledError" in result.message


async def test_plain_function_as_run_is_tolerated() -> None:
    def not_async() -> bool:
        return False

    result = await run_check(Check(name="c", run=not_async))  # type: ignore[arg-type]
    assert result.status == "fail"


def test_callable_needs_a_name_for_a_lambda() -> None:
    with pytest.raises(ValueError, match="name="):
        checks.callable(lambda: True)
    assert checks.callable(lambda: True, name="ok").name == "ok"


def test_callable_rejects_non_callables() -> None:
    with pytest.raises(TypeError):
        checks.callable(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"name": ""}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": float("inf")}, ValueError),
        ({"timeout": True}, ValueError),
        ({"run": "not callable"}, TypeError),
    ],
)
def test_check_validates_its_fields(options: dict[str, Any], error: type[Exception]) -> None:
    async def ok() -> None:
        return None

    fields: dict[str, Any] = {"name": "c", "run": ok, **options}
    with pytest.raises(error):
        Check(**fields)


# --- disk -------------------------------------------------------------------------------


async def test_disk_reports_usage_percent(tmp_path: Any) -> None:
    result = await run_check(checks.disk(str(tmp_path), warn_percent=99.8, fail_percent=99.9))
    assert result.status == "pass"
    percent = result.extra["usage_percent"]
    assert isinstance(percent, float)
    assert 0 < percent < 99.8


async def test_disk_warn_and_fail_thresholds(tmp_path: Any) -> None:
    warn = await run_check(checks.disk(str(tmp_path), warn_percent=0.01, fail_percent=100))
    fail = await run_check(checks.disk(str(tmp_path), warn_percent=0.01, fail_percent=0.02))
    assert warn.status == "warn"
    assert warn.message is not None
    assert "at or above 0.01%" in warn.message
    assert fail.status == "fail"
    assert fail.extra["usage_percent"] == warn.extra["usage_percent"]


async def test_disk_optional_fail_is_warn(tmp_path: Any) -> None:
    check = checks.disk(str(tmp_path), warn_percent=0.01, fail_percent=0.02, critical=False)
    assert (await run_check(check)).status == "warn"


async def test_disk_missing_path_fails(tmp_path: Any) -> None:
    result = await run_check(checks.disk(str(tmp_path / "missing")))
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("FileNotFoundError")


@pytest.mark.parametrize(("warn", "fail"), [(0, 90), (90, 80), (50, 101)])
def test_disk_rejects_bad_thresholds(warn: float, fail: float) -> None:
    with pytest.raises(ValueError, match="warn_percent"):
        checks.disk("/", warn_percent=warn, fail_percent=fail)


# --- http -------------------------------------------------------------------------------


async def status_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/ok" else 500
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


async def test_http_check_against_a_real_server() -> None:
    with run_uvicorn(status_app, lifespan="off") as server:
        ok = await run_check(checks.http(f"{server.url}/ok"))
        broken = await run_check(checks.http(f"{server.url}/down?token=abc", name="upstream"))
        expected = await run_check(checks.http(f"{server.url}/down", expected_status=[500]))
    assert ok.name == "127.0.0.1"
    assert ok.status == "pass"
    assert ok.extra == {"status_code": 200}
    assert broken.name == "upstream"
    assert broken.status == "fail"
    assert broken.message == f"unexpected status 500 from {server.url}/down"
    assert expected.status == "pass"


async def test_http_refused_port_fails_fast() -> None:
    start = time.perf_counter()
    result = await run_check(checks.http(f"http://127.0.0.1:{refused_port()}/", timeout=2.0))
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("ConnectError")
    assert time.perf_counter() - start < 1.0


async def test_http_black_hole_fails_at_the_timeout() -> None:
    with black_hole() as port:
        start = time.perf_counter()
        result = await run_check(checks.http(f"http://127.0.0.1:{port}/", timeout=0.3))
        elapsed = time.perf_counter() - start
    assert result.status == "fail"
    assert 0.25 <= elapsed < 0.3 + 0.3


class CountingClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` that counts its constructions (each builds an SSL context)."""

    made: ClassVar[list[CountingClient]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        CountingClient.made.append(self)


@pytest.fixture
def counted_clients(monkeypatch: pytest.MonkeyPatch) -> list[CountingClient]:
    CountingClient.made = []
    monkeypatch.setattr(httpx, "AsyncClient", CountingClient)
    return CountingClient.made


async def test_http_check_reuses_one_client_across_runs(
    counted_clients: list[CountingClient],
) -> None:
    with run_uvicorn(status_app, lifespan="off") as server:
        check = checks.http(f"{server.url}/ok")
        results = [await run_check(check) for _ in range(5)]
        down = checks.http(f"{server.url}/down")
        failed = [await run_check(down) for _ in range(3)]
    assert [result.status for result in results] == ["pass"] * 5
    assert [result.status for result in failed] == ["fail"] * 3
    assert len(counted_clients) == 2  # one per check, not one per run
    assert check.close is not None
    await check.close()
    assert counted_clients[0].is_closed


async def test_http_check_with_a_reused_client_still_fails_at_the_timeout(
    counted_clients: list[CountingClient],
) -> None:
    """A run cut off at the timeout discards its client, releasing the hung socket."""

    async def closed(client: CountingClient) -> None:
        for _ in range(500):  # polled: the abandoned request unwinds on the loop
            if client.is_closed:
                return
            await asyncio.sleep(0.01)
        pytest.fail("the client of a timed-out run was not closed")

    with black_hole() as port:
        check = checks.http(f"http://127.0.0.1:{port}/", timeout=0.3)
        for run in range(2):
            start = time.perf_counter()
            result = await run_check(check)
            elapsed = time.perf_counter() - start
            assert result.status == "fail"
            assert result.message == "TimeoutError: no answer within 0.3s"
            assert elapsed < 0.3 + 0.3
            await closed(counted_clients[run])
    assert len(counted_clients) == 2
    assert check.close is not None
    await check.close()


async def test_http_check_opens_a_fresh_connection_each_run() -> None:
    """No keep-alive: a peer that went away is noticed on the next run."""
    with run_uvicorn(status_app, lifespan="off") as server:
        check = checks.http(f"{server.url}/ok")
        assert (await run_check(check)).status == "pass"
    with run_uvicorn(status_app, lifespan="off", port=server.port) as restarted:
        assert (await run_check(check)).status == "pass"
    result = await run_check(check)  # nothing listens any more
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("ConnectError")
    assert restarted.port == server.port
    assert check.close is not None
    await check.close()


def test_http_check_runs_in_successive_event_loops(counted_clients: list[CountingClient]) -> None:
    with run_uvicorn(status_app, lifespan="off") as server:
        check = checks.http(f"{server.url}/ok")
        first = asyncio.run(run_check(check))
        second = asyncio.run(run_check(check))  # the first loop is closed by now
    assert (first.status, second.status) == ("pass", "pass")
    assert len(counted_clients) == 2  # one per loop: a client is bound to its loop


async def test_health_app_closes_the_http_client_on_shutdown(
    counted_clients: list[CountingClient],
) -> None:
    with run_uvicorn(status_app, lifespan="off") as server:
        app = HealthApp(
            {"upstream": checks.http(f"{server.url}/ok")}, registry=CollectorRegistry(), cache_ttl=0
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            for _ in range(3):
                assert (await http.get("/ready")).status_code == 200
            shown = len(counted_clients)
            answers = await drive_lifespan(app)
            assert answers[-1] == {"type": "lifespan.shutdown.complete"}
            assert counted_clients[-1].is_closed
            # Closed is not broken: the next probe makes a new client.
            assert (await http.get("/ready")).status_code == 200
    assert shown == 2  # the test's own client and the check's
    assert len(counted_clients) == 3
    await app.aclose()
    assert counted_clients[-1].is_closed


def test_http_without_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=r"pip install asgi-observe\[httpx\]"):
        checks.http("http://127.0.0.1/")


@pytest.mark.parametrize("url", ["ftp://host/", "/relative", "http:///nohost"])
def test_http_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        checks.http(url)


# --- argument validation of driver checks --------------------------------------------


class NotADatabase:
    pass


def test_database_rejects_unsupported_objects() -> None:
    with pytest.raises(TypeError, match=r"cannot check a .*NotADatabase: pass a SQLAlchemy"):
        checks.database(NotADatabase())
    with pytest.raises(TypeError, match=r"cannot check a builtins\.str"):
        checks.database("postgresql://u:p@h/db")


def test_redis_rejects_objects_without_ping() -> None:
    with pytest.raises(TypeError, match="redis-py client"):
        checks.redis(NotADatabase())


# --- messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "could not connect to postgresql://app:hunter2@db:5432/app",
            "could not connect to postgresql://[REDACTED]@db:5432/app",
        ),
        ("redis://:hunter2@cache:6379/0 refused", "redis://[REDACTED]@cache:6379/0 refused"),
        (
            "host=db user=app password=hunter2 dbname=x",
            "host=db user=app password=[REDACTED] dbname=x",
        ),
        ("password: 'hunter 2' rejected", "password: [REDACTED] rejected"),
        ("plain message", "plain message"),
    ],
)
def test_sanitize_message_removes_credentials(raw: str, expected: str) -> None:
    cleaned = sanitize_message(raw)
    assert "hunter" not in cleaned
    assert cleaned == expected


def test_sanitize_message_bounds_length() -> None:
    assert len(sanitize_message("x" * 10_000)) == 300


async def test_instrument_closes_the_mounted_health_apps_client_on_shutdown(
    counted_clients: list[CountingClient],
) -> None:
    with run_uvicorn(status_app, lifespan="off") as server:
        health = HealthApp(
            {"upstream": checks.http(f"{server.url}/ok")}, registry=CollectorRegistry()
        )
        app = instrument(
            Starlette(),
            Settings(),
            health=health,
            registry=CollectorRegistry(),
            tracer_provider=TracerProvider(),
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            assert (await http.get("/health/ready")).status_code == 200
        check_client = counted_clients[-1]
        assert not check_client.is_closed
        answers = await drive_lifespan(app)
    assert answers[-1] == {"type": "lifespan.shutdown.complete"}
    assert check_client.is_closed
