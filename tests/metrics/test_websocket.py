"""MetricsMiddleware on websocket connections: the four families, outcomes, bounds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_observe import MetricsMiddleware
from asgi_observe.metrics.websocket import DEFAULT_CONNECTION_BUCKETS
from asgi_observe.routes import OVERFLOW_LABEL, UNMATCHED_LABEL
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.metrics.helpers import label_values, value
from tests.websocket_support import (
    AppError,
    FakeConnection,
    close_after_one_app,
    deny_app,
    echo_app,
    raise_after_accept_app,
    raise_before_accept_app,
    recording,
    reject_app,
    routed,
    same_messages,
    snapshot,
    ws_scope,
)

CONNECTIONS = "websocket_connections_total"
ACTIVE = "websocket_connections_active"
DURATION = "websocket_connection_duration_seconds"
MESSAGES = "websocket_messages_total"
ROUTE = "/ws/{room}"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def connections(registry: CollectorRegistry, outcome: str, handler: str = ROUTE) -> float:
    return value(registry, CONNECTIONS, handler=handler, outcome=outcome)


def messages(registry: CollectorRegistry, direction: str, handler: str = ROUTE) -> float:
    return value(registry, MESSAGES, handler=handler, direction=direction)


async def test_accepted_echo_counts_connection_messages_and_duration() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry)
    conn = FakeConnection(["a", b"b", "c"], disconnect_code=1001)
    await conn.run(app)

    assert connections(registry, "accepted") == 1
    assert connections(registry, "rejected") == 0
    assert connections(registry, "error") == 0
    assert messages(registry, "received") == 3
    assert messages(registry, "sent") == 3
    assert value(registry, ACTIVE, handler=ROUTE) == 0
    assert value(registry, f"{DURATION}_count", handler=ROUTE) == 1


async def test_server_close_counts_sent_messages_but_not_the_close() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(close_after_one_app, ROUTE), registry=registry)
    await FakeConnection(["hi"]).run(app)
    assert messages(registry, "received") == 1
    assert messages(registry, "sent") == 2  # websocket.close is not a message
    assert connections(registry, "accepted") == 1
    assert value(registry, ACTIVE, handler=ROUTE) == 0


async def test_active_gauge_counts_open_connections_from_accept() -> None:
    registry = CollectorRegistry()
    release = asyncio.Event()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry)
    conn = FakeConnection(["x"], release=release)
    task = asyncio.create_task(conn.run(app))
    await conn.waiting.wait()  # accepted, one message echoed, connection still open
    assert value(registry, ACTIVE, handler=ROUTE) == 1
    assert connections(registry, "accepted") == 0  # counted with its outcome, at the end
    release.set()
    await task
    assert value(registry, ACTIVE, handler=ROUTE) == 0
    assert connections(registry, "accepted") == 1


@pytest.mark.parametrize("app", [reject_app, deny_app], ids=["close", "denial-response"])
async def test_rejected_connections(app: ASGIApp) -> None:
    registry = CollectorRegistry()
    middleware = MetricsMiddleware(routed(app, ROUTE), registry=registry)
    conn = FakeConnection()
    await conn.run(middleware)
    assert connections(registry, "rejected") == 1
    assert connections(registry, "accepted") == 0
    # Never accepted: never active, no duration observed.
    assert value(registry, f"{DURATION}_count", handler=ROUTE) == 0
    assert label_values(registry, ACTIVE, "handler") == set()


async def test_app_raising_before_accept_is_an_error_and_re_raised() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(raise_before_accept_app, ROUTE), registry=registry)
    with pytest.raises(AppError):
        await FakeConnection().run(app)
    assert connections(registry, "error") == 1
    assert connections(registry, "rejected") == 0
    assert value(registry, f"{DURATION}_count", handler=ROUTE) == 0


async def test_app_raising_after_accept_is_an_error_and_leaves_no_active_connection() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(raise_after_accept_app, ROUTE), registry=registry)
    with pytest.raises(AppError):
        await FakeConnection(["one"]).run(app)
    assert connections(registry, "error") == 1
    assert connections(registry, "accepted") == 0
    assert value(registry, ACTIVE, handler=ROUTE) == 0
    assert value(registry, f"{DURATION}_count", handler=ROUTE) == 1  # it was open
    assert messages(registry, "sent") == 1
    assert messages(registry, "received") == 1


async def test_fifty_concurrent_connections_are_counted_exactly() -> None:
    registry = CollectorRegistry()
    release = asyncio.Event()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry)
    conns = [FakeConnection([f"m{i}", f"n{i}"], release=release) for i in range(50)]
    tasks = [asyncio.create_task(conn.run(app)) for conn in conns]
    await asyncio.gather(*(conn.waiting.wait() for conn in conns))
    assert value(registry, ACTIVE, handler=ROUTE) == 50
    release.set()
    await asyncio.gather(*tasks)
    assert value(registry, ACTIVE, handler=ROUTE) == 0
    assert connections(registry, "accepted") == 50
    assert messages(registry, "received") == 100
    assert messages(registry, "sent") == 100
    assert value(registry, f"{DURATION}_count", handler=ROUTE) == 50
    for conn in conns:  # each connection got its own echoes, in order
        texts = [m.get("text") for m in conn.sent if m["type"] == "websocket.send"]
        expected = [m.get("text") for m in conn.received if m["type"] == "websocket.receive"]
        assert texts == expected


async def ws_room(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"{websocket.path_params['room']}:{text}")
    await websocket.close(code=1000)


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            WebSocketRoute("/ws/{room}", ws_room),
            Mount("/chat", routes=[WebSocketRoute("/rooms/{room}", ws_room)]),
        ]
    )


@pytest.mark.parametrize(
    ("path", "template"),
    [("/ws/lobby", "/ws/{room}"), ("/chat/rooms/kitchen", "/chat/rooms/{room}")],
)
async def test_starlette_websocket_route_templates(path: str, template: str) -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(starlette_app(), registry=registry)
    conn = FakeConnection(["hello"])
    await conn.run(app, ws_scope(path))
    assert connections(registry, "accepted", template) == 1
    assert messages(registry, "sent", template) == 1
    assert label_values(registry, CONNECTIONS, "handler") == {template}


async def test_unmatched_websocket_path_shares_the_unmatched_label() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(starlette_app(), registry=registry)
    await FakeConnection().run(app, ws_scope("/nowhere/12345"))
    # Starlette's router closes unmatched websockets before accepting.
    assert label_values(registry, CONNECTIONS, "handler") == {UNMATCHED_LABEL}
    assert connections(registry, "rejected", UNMATCHED_LABEL) == 1


async def test_handler_labels_stay_bounded_under_a_thousand_distinct_paths() -> None:
    registry = CollectorRegistry()

    async def raw_path_as_route(scope: Scope, receive: Receive, send: Send) -> None:
        # The worst case: an app that names its route after the raw path.
        scope["asgi_observe.route"] = scope["path"]
        await echo_app(scope, receive, send)

    app = MetricsMiddleware(raw_path_as_route, registry=registry, max_handlers=20)
    for i in range(1000):
        await FakeConnection(["x"]).run(app, ws_scope(f"/ws/{i}"))
    handlers = label_values(registry, CONNECTIONS, "handler")
    assert len(handlers) == 21
    assert OVERFLOW_LABEL in handlers
    assert label_values(registry, MESSAGES, "handler") == handlers
    assert connections(registry, "accepted", OVERFLOW_LABEL) == 980


async def test_http_and_websocket_routes_share_one_handler_cap() -> None:
    registry = CollectorRegistry()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.route"] = scope["path"]
        if scope["type"] == "websocket":
            await echo_app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = MetricsMiddleware(app, registry=registry, max_handlers=1)
    http_scope: Scope = {"type": "http", "method": "GET", "path": "/first", "headers": []}

    async def no_body() -> Message:
        return {"type": "http.request", "body": b""}

    async def drop(message: Message) -> None:
        return None

    await middleware(http_scope, no_body, drop)
    await FakeConnection().run(middleware, ws_scope("/ws/second"))
    assert label_values(registry, CONNECTIONS, "handler") == {OVERFLOW_LABEL}


async def test_namespace_prefixes_the_websocket_families() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry, namespace="chat")
    await FakeConnection(["a"]).run(app)
    assert value(registry, f"chat_{CONNECTIONS}", handler=ROUTE, outcome="accepted") == 1
    assert value(registry, f"chat_{MESSAGES}", handler=ROUTE, direction="received") == 1
    assert value(registry, f"chat_{DURATION}_count", handler=ROUTE) == 1
    assert value(registry, CONNECTIONS, handler=ROUTE, outcome="accepted") == 0


async def test_duration_buckets_reach_long_lived_connections() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry)
    await FakeConnection().run(app)
    assert value(registry, f"{DURATION}_bucket", handler=ROUTE, le="86400.0") == 1
    assert max(DEFAULT_CONNECTION_BUCKETS) >= 3600


async def test_excluded_paths_are_not_measured() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(routed(echo_app, ROUTE), registry=registry, exclude_paths=["/ws/lobby"])
    await FakeConnection(["a"]).run(app)
    assert label_values(registry, CONNECTIONS, "handler") == set()
    assert label_values(registry, MESSAGES, "handler") == set()


MULTIPROCESS_SCRIPT = """
import asyncio, json, os, sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from asgi_observe import MetricsMiddleware
from tests.websocket_support import FakeConnection, echo_app, routed

def active():
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged.get_sample_value("websocket_connections_active", {"handler": "/ws/{room}"})

async def main():
    app = MetricsMiddleware(routed(echo_app, "/ws/{room}"), registry=CollectorRegistry(),
                            multiprocess=True)
    release = asyncio.Event()
    conn = FakeConnection(["x"], release=release)
    task = asyncio.create_task(conn.run(app))
    await conn.waiting.wait()
    during = active()
    release.set()
    await task
    files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    print(json.dumps({"during": during, "after": active(), "files": files, "pid": os.getpid()}))

asyncio.run(main())
"""


def test_multiprocess_mode_writes_a_livesum_active_gauge(tmp_path: Path) -> None:
    """In a process of its own: prometheus-client picks its multiprocess values at import."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["during"] == 1
    assert report["after"] == 0
    assert f"gauge_livesum_{report['pid']}.db" in report["files"]


async def test_messages_pass_through_unchanged_in_both_directions() -> None:
    scripted: list[str | bytes] = ["a", b"\x00\x01", "c"]

    bare = FakeConnection(scripted, disconnect_code=1001)
    seen_bare: list[Message] = []
    await bare.run(recording(close_after_one_app, seen_bare))

    wrapped = FakeConnection(scripted, disconnect_code=1001)
    seen_wrapped: list[Message] = []
    app = MetricsMiddleware(
        recording(close_after_one_app, seen_wrapped), registry=CollectorRegistry()
    )
    await wrapped.run(app)

    assert snapshot(wrapped.sent) == snapshot(bare.sent)
    assert snapshot(seen_wrapped) == snapshot(seen_bare)
    assert same_messages(seen_wrapped, wrapped.received)  # the very objects, in order


async def test_lifespan_passes_through() -> None:
    registry = CollectorRegistry()
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    await MetricsMiddleware(app, registry=registry)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert label_values(registry, CONNECTIONS, "handler") == set()


async def test_constant_labels_are_on_every_websocket_family() -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(
        routed(echo_app, ROUTE), registry=registry, const_labels={"service": "chat"}
    )
    await FakeConnection(["a"]).run(app)
    labels = {"handler": ROUTE, "service": "chat"}
    assert value(registry, CONNECTIONS, outcome="accepted", **labels) == 1
    assert value(registry, ACTIVE, **labels) == 0
    assert value(registry, f"{DURATION}_count", **labels) == 1
    assert value(registry, MESSAGES, direction="sent", **labels) == 1


def test_constant_labels_clashing_with_websocket_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        MetricsMiddleware(echo_app, registry=CollectorRegistry(), const_labels={"outcome": "x"})


def fastapi_with_included_websocket() -> Starlette:
    """FastAPI serves a websocket route of an included router through a copy it builds
    for the inclusion; mounted under a Starlette ``Mount``, the label needs the prefix."""
    api = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.websocket("/chat/{cid}")
    async def chat(websocket: WebSocket, cid: str) -> None:
        await websocket.accept()
        await websocket.send_text(cid)
        await websocket.close()

    api.include_router(router, prefix="/api")
    return Starlette(routes=[Mount("/svc", app=api)])


async def test_fastapi_included_router_websocket_gets_its_full_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    app = MetricsMiddleware(fastapi_with_included_websocket(), registry=registry)
    for cid in ("1", "2"):
        await FakeConnection().run(app, ws_scope(f"/svc/api/v1/chat/{cid}"))
    template = "/svc/api/v1/chat/{cid}"
    assert label_values(registry, CONNECTIONS, "handler") == {template}
    assert connections(registry, "accepted", template) == 2
    assert messages(registry, "sent", template) == 2
    assert "mount prefix is unknown" not in caplog.text
