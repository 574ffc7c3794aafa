"""instrument(): the stack in order, its endpoints and its lifespan."""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.error
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument
from asgi_observe._lifespan import Hook, LifespanHooks, StartupAbortedError
from asgi_observe.types import Message, Receive, Scope, Send
from tests.metrics.helpers import value
from tests.support import drive_lifespan


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/hello/{name}", hello)])


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"  # a raw app that does not support lifespan
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"raw"})


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


async def test_metrics_endpoint_and_http_metrics(registry: CollectorRegistry) -> None:
    app = instrument(starlette_app(), Settings(), registry=registry)
    async with client(app) as http:
        assert (await http.get("/hello/ada")).text == "hello"
        scrape = await http.get("/metrics")
    assert scrape.status_code == 200
    assert (
        'http_requests_total{handler="/hello/{name}",method="GET",status="200"} 1.0' in scrape.text
    )
    assert (
        value(registry, "http_requests_total", method="GET", status="200", handler="/metrics") == 1
    )


async def test_raw_asgi_apps_are_served_too(registry: CollectorRegistry) -> None:
    app = instrument(raw_app, Settings(), registry=registry)
    async with client(app) as http:
        assert (await http.get("/anything/1")).text == "raw"
        assert (await http.get("/metrics")).status_code == 200
    assert value(registry, "http_requests_total", method="GET", status="200", handler="none") == 1


async def test_metrics_disabled_removes_endpoint_and_middleware(
    registry: CollectorRegistry,
) -> None:
    app = instrument(starlette_app(), Settings(enable_metrics=False), registry=registry)
    async with client(app) as http:
        assert (await http.get("/metrics")).status_code == 404
        await http.get("/hello/x")
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "status": "200", "handler": "/hello/{name}"}
        )
        is None
    )


async def test_health_is_mounted_at_health(registry: CollectorRegistry) -> None:
    seen: list[tuple[str, str]] = []

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["root_path"], scope["path"]))
        scope["asgi_observe.subroute"] = "/live"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"live"})

    app = instrument(starlette_app(), Settings(), registry=registry, health=health)
    async with client(app) as http:
        assert (await http.get("/health/live")).text == "live"
        assert (await http.get("/healthy")).status_code == 404  # a prefix is not a mount
    assert seen == [("/health", "/health/live")]
    assert (
        value(registry, "http_requests_total", method="GET", status="200", handler="/health/live")
        == 1
    )


def test_instrumenting_twice_is_refused() -> None:
    app = instrument(raw_app, Settings(), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="already instrumented"):
        instrument(app, Settings(), registry=CollectorRegistry())


async def run_lifespan(app: object) -> list[str]:
    return [message["type"] for message in await drive_lifespan(app)]


async def test_lifespan_hooks_run_around_an_app_with_lifespan() -> None:
    order: list[str] = []

    async def on_start() -> None:
        order.append("hook-start")

    async def on_stop() -> None:
        order.append("hook-stop")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        order.append("app-start")
        yield
        order.append("app-stop")

    app = Starlette(lifespan=lifespan)
    sent = await run_lifespan(LifespanHooks(app, startup=[on_start], shutdown=[on_stop]))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert order == ["hook-start", "app-start", "app-stop", "hook-stop"]


async def test_lifespan_is_completed_for_apps_without_support() -> None:
    order: list[str] = []

    async def on_start() -> None:
        order.append("start")

    async def on_stop() -> None:
        order.append("stop")

    sent = await run_lifespan(LifespanHooks(raw_app, startup=[on_start], shutdown=[on_stop]))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert order == ["start", "stop"]


async def test_a_failing_hook_does_not_stop_the_app() -> None:
    async def broken() -> None:
        raise OSError("collector unreachable")

    sent = await run_lifespan(LifespanHooks(raw_app, startup=[broken], shutdown=[broken]))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_app_startup_failure_is_propagated() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        failure = RuntimeError("database migration failed")
        if failure:
            raise failure
        yield  # pragma: no cover - never reached, but makes this an async generator

    sent: list[Message] = []
    with pytest.raises(RuntimeError, match="migration"):
        await drive_lifespan(
            LifespanHooks(Starlette(lifespan=lifespan)), ("lifespan.startup",), sent=sent
        )
    assert sent[0]["type"] == "lifespan.startup.failed"


def test_internal_port_serves_metrics_for_the_app_lifetime(registry: CollectorRegistry) -> None:
    from tests.support import free_port, http_get, run_uvicorn

    port = free_port()
    settings = Settings(metrics_internal_port=port, metrics_internal_host="127.0.0.1")
    app = instrument(starlette_app(), settings, registry=registry)
    with run_uvicorn(app) as server:
        assert http_get(f"{server.url}/hello/x")[0] == 200
        assert http_get(f"{server.url}/metrics")[0] == 404
        assert http_get(f"{server.url}/metrics/legacy")[0] == 404
        status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'handler="/hello/{name}"' in body.decode()
        assert http_get(f"http://127.0.0.1:{port}/metrics/legacy")[0] == 200
    with pytest.raises(urllib.error.URLError, match="refused"):  # stopped with the lifespan
        http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)


async def test_metrics_token_guards_the_public_endpoint(registry: CollectorRegistry) -> None:
    token = "s3cret-token-0123456789"
    app = instrument(starlette_app(), Settings(metrics_token=token), registry=registry)
    async with client(app) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (
            await http.get("/metrics", headers={"authorization": "Bearer nope-nope-nope-nope"})
        ).status_code == 401
        assert (
            await http.get("/metrics", headers={"authorization": f"Bearer {token}"})
        ).status_code == 200
        assert (await http.get("/metrics/legacy")).status_code == 401


def _taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port: int = holder.getsockname()[1]
    return holder, port


async def test_an_internal_port_that_cannot_be_bound_stops_start_up(
    registry: CollectorRegistry,
) -> None:
    holder, port = _taken_port()
    try:
        app = instrument(starlette_app(), Settings(metrics_internal_port=port), registry=registry)
        sent = await drive_lifespan(app, ("lifespan.startup",))
    finally:
        holder.close()
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "METRICS_INTERNAL_PORT" in sent[0]["message"]
    assert str(port) in sent[0]["message"]


@pytest.mark.parametrize("multiprocess", [False, True])
async def test_a_foreign_process_on_the_internal_port_stops_start_up(
    registry: CollectorRegistry, tmp_path: Path, multiprocess: bool
) -> None:
    # The port is held by this very process, not by a sibling worker: never mistaken for
    # "another worker serves it", with or without PROMETHEUS_MULTIPROC_DIR.
    holder, port = _taken_port()
    try:
        settings = Settings(
            metrics_internal_port=port,
            prometheus_multiproc_dir=str(tmp_path) if multiprocess else None,
        )
        sent = await drive_lifespan(instrument(raw_app, settings, registry=registry))
    finally:
        holder.close()
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "METRICS_INTERNAL_PORT" in sent[0]["message"]


def recording_hooks(events: list[str]) -> tuple[Hook, Hook]:
    """A start-up hook that records "opened" and a shutdown hook that records "closed"."""

    async def opens() -> None:
        events.append("opened")

    async def closes() -> None:
        events.append("closed")

    return opens, closes


async def test_an_aborting_hook_closes_what_earlier_hooks_opened() -> None:
    events: list[str] = []
    opens, closes = recording_hooks(events)

    async def aborts() -> None:
        raise StartupAbortedError("METRICS_INTERNAL_PORT: taken")

    hooks = LifespanHooks(raw_app, startup=[opens, aborts], shutdown=[closes])
    sent = await drive_lifespan(hooks, ("lifespan.startup",))
    assert events == ["opened", "closed"]
    assert sent == [{"type": "lifespan.startup.failed", "message": "METRICS_INTERNAL_PORT: taken"}]


async def test_shutdown_hooks_run_when_the_app_start_up_fails() -> None:
    events: list[str] = []

    async def closes() -> None:
        events.append("closed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        failure = RuntimeError("migration failed")
        if failure:
            raise failure
        yield  # pragma: no cover

    app = LifespanHooks(Starlette(lifespan=lifespan), shutdown=[closes])
    with pytest.raises(RuntimeError, match="migration"):
        await drive_lifespan(app, ("lifespan.startup",))
    assert events == ["closed"]


async def test_an_app_raising_after_taking_startup_fails_start_up() -> None:
    events: list[str] = []
    opens, closes = recording_hooks(events)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # it speaks lifespan...
        raise RuntimeError("the database is unreachable")  # ...and its start-up failed

    sent: list[Message] = []
    with pytest.raises(RuntimeError, match="unreachable"):
        await drive_lifespan(
            LifespanHooks(app, startup=[opens], shutdown=[closes]),
            ("lifespan.startup",),
            sent=sent,
        )
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "RuntimeError: the database is unreachable",
        }
    ]
    assert events == ["opened", "closed"]


async def test_only_an_app_raising_before_receiving_is_lifespan_unsupported() -> None:
    events: list[str] = []
    opens, closes = recording_hooks(events)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")

    sent = await run_lifespan(LifespanHooks(app, startup=[opens], shutdown=[closes]))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["opened", "closed"]


@pytest.mark.realparts
@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_a_failing_app_start_up_fails_under_a_real_uvicorn(lifespan: str) -> None:
    from tests.e2e.servers import free_port, run_to_exit, server_env, uvicorn_argv

    result = run_to_exit(
        uvicorn_argv(
            "tests.e2e.servers:observed_raising_startup_app",
            free_port(),
            "--lifespan",
            lifespan,
        ),
        env=server_env(),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Application startup failed" in output
    assert "the database is unreachable" in output
    assert "Application startup complete" not in output


@pytest.mark.realparts
def test_a_failing_app_start_up_fails_as_it_does_bare() -> None:
    from tests.e2e.servers import free_port, run_to_exit, server_env, uvicorn_argv

    bare = run_to_exit(
        uvicorn_argv(
            "tests.e2e.servers:raising_startup_app",
            free_port(),
            "--lifespan",
            "on",
            factory=False,
        ),
        env=server_env(),
    )
    observed = run_to_exit(
        uvicorn_argv(
            "tests.e2e.servers:observed_raising_startup_app", free_port(), "--lifespan", "on"
        ),
        env=server_env(),
    )
    for result in (bare, observed):
        output = result.stdout + result.stderr
        assert "Application startup failed" in output, output
    assert observed.returncode == bare.returncode != 0


@pytest.mark.realparts
def test_an_internal_port_taken_by_a_foreign_process_fails_a_real_uvicorn() -> None:
    from tests.e2e.servers import free_port, run_to_exit, server_env, uvicorn_argv

    holder, port = _taken_port()
    try:
        result = run_to_exit(
            uvicorn_argv("tests.e2e.servers:observed_app", free_port()),
            env=server_env(METRICS_INTERNAL_PORT=str(port)),
        )
    finally:
        holder.close()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Application startup failed" in output
    assert "METRICS_INTERNAL_PORT: the internal metrics listener cannot start" in output
    assert str(port) in output


def _open_metrics_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "asgi_observe"
        and record.levelname == "WARNING"
        and "/metrics is open" in record.getMessage()
    ]


def test_an_open_metrics_endpoint_in_production_is_warned_about_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="asgi_observe"):
        instrument(
            starlette_app(), Settings.from_env({"ENVIRONMENT": "production"}), registry=registry
        )
    [message] = _open_metrics_warnings(caplog)
    for variable in ("METRICS_TOKEN", "METRICS_ALLOW", "METRICS_INTERNAL_PORT"):
        assert variable in message


@pytest.mark.parametrize(
    "environ",
    [
        {"ENVIRONMENT": "development"},
        {},
        {"ENVIRONMENT": "staging"},
        {"ENVIRONMENT": "production", "METRICS_TOKEN": "s3cret-token-0123456789"},
        {"ENVIRONMENT": "production", "METRICS_ALLOW": "10.0.0.0/8"},
        {"ENVIRONMENT": "production", "METRICS_INTERNAL_PORT": "9464"},
        {"ENVIRONMENT": "production", "ENABLE_METRICS": "false"},
    ],
)
def test_no_open_metrics_warning_when_guarded_or_not_production(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture, environ: dict[str, str]
) -> None:
    with caplog.at_level(logging.INFO, logger="asgi_observe"):
        instrument(starlette_app(), Settings.from_env(environ), registry=registry)
    assert _open_metrics_warnings(caplog) == []


async def test_every_option_reaches_the_one_call_path(registry: CollectorRegistry) -> None:
    """Settings fields and instrument()'s keyword arguments reach the pieces they concern."""
    from structlog.testing import capture_logs

    async def raw_router(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def resolver(scope: Scope) -> str | None:
        parts = scope["path"].split("/")
        return "/orders/{order_id}" if len(parts) == 3 and parts[1] == "orders" else None

    settings = Settings(
        metrics_namespace="shop",
        metrics_buckets=(0.5, 5.0),
        metrics_exclude_paths=("/internal/ping",),
        request_id_header="X-Correlation-ID",
        access_log_exclude_paths=("/quiet",),
    )
    app = instrument(raw_router, settings, registry=registry, route_resolver=resolver)
    with capture_logs() as logs:
        async with client(app) as http:
            response = await http.get("/orders/17", headers={"X-Correlation-ID": "corr-1"})
            await http.get("/internal/ping")
            await http.get("/quiet")
            scrape = await http.get("/metrics")
            legacy = await http.get("/metrics/legacy")
    assert response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in response.headers
    text = scrape.text
    assert (
        'shop_http_requests_total{handler="/orders/{order_id}",method="GET",status="200"} 1.0'
        in text
    )
    assert 'shop_http_request_duration_seconds_bucket{handler="/orders/{order_id}",le="0.5"' in text
    assert 'le="0.25"' not in text  # the default buckets are gone
    assert "/internal/ping" not in text  # excluded from the metrics...
    logged = [entry["path"] for entry in logs if entry.get("event") == "request"]
    # /internal/ping is excluded from the metrics only, /quiet from the log only; the
    # exclusions given replace the default ones, so the scrapes are logged.
    assert logged == ["/orders/17", "/internal/ping", "/metrics", "/metrics/legacy"]
    first = next(entry for entry in logs if entry.get("path") == "/orders/17")
    assert first["route"] == "/orders/{order_id}"
    assert first["request_id"] == "corr-1"
    # The namespace reaches the legacy JSON too: /orders/17, /quiet and /metrics so far.
    assert legacy.json()["api_metrics"]["requests"] == 3
