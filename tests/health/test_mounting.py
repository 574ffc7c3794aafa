"""HealthApp mounted under Starlette, FastAPI, Litestar and raw dispatch, and on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from litestar import Litestar, asgi
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from asgi_observe.health import Check, HealthApp
from asgi_observe.metrics.http import MetricsMiddleware
from asgi_observe.types import Message, Receive, Scope, Send
from tests.support import http_get, run_uvicorn


def client(app: Any) -> httpx.AsyncClient:  # Litestar types its __call__ more narrowly
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def ok() -> bool:
    return True


async def failing() -> bool:
    return False


def health(registry: CollectorRegistry, **options: Any) -> HealthApp:
    return HealthApp({"db": ok}, version="1.2.3", registry=registry, **options)


async def assert_probes(http: httpx.AsyncClient, prefix: str) -> None:
    live = await http.get(f"{prefix}/live")
    assert live.status_code == 200
    assert live.json()["status"] == "live"
    ready = await http.get(f"{prefix}/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["checks"]["db"]["status"] == "pass"
    startup = await http.get(f"{prefix}/startup")
    assert startup.status_code == 200
    legacy = await http.get(f"{prefix}/")
    assert legacy.status_code == 200
    assert legacy.json()["version"] == "1.2.3"
    missing = await http.get(f"{prefix}/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    post = await http.post(f"{prefix}/ready")
    assert post.status_code == 405


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("home")


async def test_starlette_mount(registry: CollectorRegistry) -> None:
    app = Starlette(routes=[Route("/", home), Mount("/health", app=health(registry))])
    async with client(app) as http:
        await assert_probes(http, "/health")
        assert (await http.get("/")).text == "home"


async def test_nested_starlette_mounts(registry: CollectorRegistry) -> None:
    inner = Starlette(routes=[Mount("/health", app=health(registry))])
    app = Starlette(routes=[Mount("/api", app=inner)])
    async with client(app) as http:
        await assert_probes(http, "/api/health")


async def test_fastapi_mount(registry: CollectorRegistry) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.mount("/health", health(registry))
    async with client(app) as http:
        await assert_probes(http, "/health")
        assert (await http.get("/items/3")).json() == {"item_id": 3}


@pytest.mark.parametrize("copy_scope", [True, False])
async def test_litestar_asgi_mount(registry: CollectorRegistry, copy_scope: bool) -> None:
    mounted = asgi("/health", is_mount=True, copy_scope=copy_scope)(health(registry))
    app = Litestar([mounted])
    async with client(app) as http:
        await assert_probes(http, "/health")
        assert (await http.get("/health")).json()["status"] == "healthy"


# Litestar 2 deprecates leaving copy_scope unset when the handler is registered; that
# warning is about the app's configuration. The per-request LitestarWarning about a mounted
# app writing to an uncopied scope stays an error: the health app must not trigger it.
@pytest.mark.filterwarnings("ignore:.*'copy_scope' not set:DeprecationWarning")
async def test_litestar_default_copy_scope_emits_no_warning(registry: CollectorRegistry) -> None:
    app = Litestar([asgi("/health", is_mount=True)(health(registry))])
    async with client(app) as http:
        assert (await http.get("/health/ready")).status_code == 200


async def test_raw_dispatch_with_root_path(registry: CollectorRegistry) -> None:
    probes = health(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/health"):
            await probes({**scope, "root_path": "/health"}, receive, send)
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with client(app) as http:
        await assert_probes(http, "/health")
        assert (await http.get("/health")).json()["status"] == "healthy"


async def test_raw_dispatch_stripping_the_prefix(registry: CollectorRegistry) -> None:
    probes = health(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        child = {**scope, "root_path": "/health", "path": path[len("/health") :]}
        await probes(child, receive, send)

    async with client(app) as http:
        await assert_probes(http, "/health")


async def test_metrics_label_the_mounted_subroutes(registry: CollectorRegistry) -> None:
    app = Starlette(routes=[Mount("/health", app=health(registry))])
    async with client(MetricsMiddleware(app, registry=registry)) as http:
        await http.get("/health/ready")
        await http.get("/health/live")
        await http.get("/health/nope")
    for handler in ("/health/ready", "/health/live"):
        labels = {"method": "GET", "status": "200", "handler": handler}
        assert registry.get_sample_value("http_requests_total", labels) == 1
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "status": "404", "handler": "/health/{path}"}
        )
        == 1
    )


# --- on the wire ------------------------------------------------------------------------


def test_top_level_under_uvicorn_with_lifespan(registry: CollectorRegistry) -> None:
    app = HealthApp({"db": failing}, version="7", registry=registry)
    with run_uvicorn(app, lifespan="on") as server:
        status, headers, body = http_get(f"{server.url}/live")
        assert status == 200
        assert json.loads(body)["status"] == "live"
        assert headers["content-type"] == "application/json"
        status, _, body = http_get(f"{server.url}/ready")
        assert status == 503
        assert json.loads(body)["checks"]["db"]["message"] == "check returned False"
        status, headers, body = http_get(
            f"{server.url}/ready", headers={"Accept": "application/health+json"}
        )
        assert status == 503
        assert headers["content-type"] == "application/health+json"
        assert json.loads(body)["status"] == "fail"
        head = httpx.head(f"{server.url}/live")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        post = httpx.post(f"{server.url}/live")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
    assert server.server.started  # lifespan start-up completed, so uvicorn served


def test_probe_storm_over_the_wire_runs_each_check_once(registry: CollectorRegistry) -> None:
    calls = 0

    async def slow() -> bool:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return True

    app = HealthApp([Check(name="db", run=slow)], registry=registry, cache_ttl=5)

    async def storm(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:
            responses = await asyncio.gather(*(http.get(f"{url}/ready") for _ in range(50)))
        return [r.status_code for r in responses]

    with run_uvicorn(app) as server:
        start = time.perf_counter()
        statuses = asyncio.run(storm(server.url))
        elapsed = time.perf_counter() - start
    assert statuses == [200] * 50
    assert calls == 1
    assert elapsed < 5


@pytest.mark.parametrize(
    ("path", "convention"),
    [
        ("/api{sub}", "path includes root_path (uvicorn, ASGI spec)"),
        ("{sub}", "path excludes root_path (hypercorn behind a prefix-stripping proxy)"),
    ],
)
@pytest.mark.parametrize("sub", ["/health/live", "/health/ready", "/health/startup", "/metrics"])
async def test_probes_under_root_path_in_either_convention(
    registry: CollectorRegistry, path: str, convention: str, sub: str
) -> None:
    from asgi_observe import Settings, instrument

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    observed = instrument(app, Settings(), health=health(registry), registry=registry)
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    full = path.format(sub=sub)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": full,
        "raw_path": full.encode(),
        "query_string": b"",
        "root_path": "/api",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }
    await observed(scope, receive, send)
    assert status == 200, convention


async def test_a_root_path_prefix_only_strips_whole_segments(registry: CollectorRegistry) -> None:
    from asgi_observe._asgi import relative_path

    assert relative_path({"path": "/api/health", "root_path": "/api"}) == "/health"
    assert relative_path({"path": "/api", "root_path": "/api"}) == "/"
    assert relative_path({"path": "/apix/health", "root_path": "/api"}) == "/apix/health"
    assert relative_path({"path": "/health", "root_path": "/api"}) == "/health"
