"""InternalMetricsServer: a separate metrics listener living as long as the app."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from asgi_observe._lifespan import LifespanHooks
from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.internal import InternalMetricsServer
from asgi_observe.metrics.legacy import legacy_metrics_app
from asgi_observe.types import Receive, Scope, Send
from tests.support import free_port, http_get, run_uvicorn, wait_until

TOKEN = "internal-token-0123456789"


def registry_with_sample() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("orders", "Orders placed", registry=registry).inc(5)
    return registry


@pytest.fixture
async def server() -> AsyncIterator[InternalMetricsServer]:
    registry = registry_with_sample()
    listener = InternalMetricsServer(
        {"/metrics": metrics_app(registry), "/metrics/legacy": legacy_metrics_app(registry)},
        port=0,
        timeout=0.5,
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_serves_metrics_and_legacy(server: InternalMetricsServer) -> None:
    assert server.port != 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        metrics = await client.get("/metrics")
        legacy = await client.get("/metrics/legacy")
        missing = await client.get("/")
        head = await client.head("/metrics")
        post = await client.post("/metrics", content=b"x")
        gzipped = await client.get("/metrics", headers={"accept-encoding": "gzip"})
    assert metrics.status_code == 200
    assert "orders_total 5.0" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert legacy.json()["api_metrics"]["requests"] == 0
    assert missing.status_code == 404
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert post.status_code == 405
    assert gzipped.headers["content-encoding"] == "gzip"
    assert "orders_total 5.0" in gzipped.text


async def test_keep_alive_serves_several_requests_on_one_connection(
    server: InternalMetricsServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            assert b"orders_total 5.0" in body
    finally:
        writer.close()


H = b"Host: x\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET metrics HTTP/1.1\r\n" + H + b"\r\n", b"400"),
        (b"GET /metrics HTTP/2.0\r\n" + H + b"\r\n", b"505"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 requires Host (RFC 9112)
        (b"GET /metrics HTTP/1.1\r\n" + H + b"no colon here\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", b"400"),
        (
            b"GET /metrics HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"400",
        ),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"Content-Length: 99999999\r\n\r\n", b"413"),
        (
            b"POST /metrics HTTP/1.1\r\n"
            + H
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"10001\r\n"
            + b"a" * 0x10001
            + b"\r\n0\r\n\r\n",
            b"413",
        ),
        # A chunked body is framed by h11; the endpoint itself refuses POST.
        (
            b"POST /metrics HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"405",
        ),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"X-Many: a\r\n" * 2_000 + b"\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 100_000, b"431"),  # never ends
        (b"GET /metrics HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", b"200"),
        (b"GET /%ff%00?x=y HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", b"404"),
        (b"GET /\xff HTTP/1.1\r\n" + H + b"\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + H + b"X-Bad: \x00\r\n\r\n", b"400"),
    ],
)
async def test_malformed_requests_get_an_error_and_a_closed_connection(
    server: InternalMetricsServer, request_bytes: bytes, status: bytes
) -> None:
    response = await raw_exchange(server.port, request_bytes)  # read() returns at close
    assert response.startswith(b"HTTP/1.1 " + status + b" ")


async def test_a_slow_client_gets_408_and_loses_its_connection(
    server: InternalMetricsServer,
) -> None:
    """Slowloris: a byte now and then keeps no connection past the request deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50
    received = b""
    try:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                received = await asyncio.wait_for(reader.read(), 0.05)
            except asyncio.TimeoutError:
                continue
            break
        if not received:  # the whole trickle fit in the deadline: wait for the verdict
            received = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received.lower()


async def test_a_slow_client_does_not_delay_others(server: InternalMetricsServer) -> None:
    """The listener shares the app's event loop: a stalled client must not block it."""
    _, stalled = await asyncio.open_connection("127.0.0.1", server.port)
    stalled.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # head never finished
    await stalled.drain()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            responses = await asyncio.gather(*(client.get("/metrics") for _ in range(20)))
        assert [response.status_code for response in responses] == [200] * 20
    finally:
        stalled.close()


async def test_idle_connections_are_closed_after_the_timeout(server: InternalMetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    finally:
        writer.close()


async def test_guards_see_the_socket_peer() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN, allow=["127.0.0.0/8"])
    listener = InternalMetricsServer({"/metrics": app}, port=0)
    await listener.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as client:
            assert (await client.get("/metrics")).status_code == 401
            ok = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200
    finally:
        await listener.stop()
    far = InternalMetricsServer({"/metrics": metrics_app(allow=["10.0.0.0/8"])}, port=0)
    await far.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{far.port}") as client:
            assert (await client.get("/metrics")).status_code == 403
    finally:
        await far.stop()


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = InternalMetricsServer({"/metrics": metrics_app(CollectorRegistry())}, port=port)
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port} .*METRICS_INTERNAL_PORT"):
            await listener.start()
    assert not listener.running


def test_an_invalid_port_is_refused() -> None:
    with pytest.raises(ValueError, match="METRICS_INTERNAL_PORT"):
        InternalMetricsServer({}, port=70000)


async def test_stop_closes_the_listener_and_open_connections() -> None:
    listener = InternalMetricsServer({"/metrics": metrics_app(CollectorRegistry())}, port=0)
    await listener.start()
    await listener.start()  # idempotent
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    await listener.stop()
    await listener.stop()  # idempotent
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", listener.port)


async def test_an_app_that_raises_gives_500_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("collector exploded")

    listener = InternalMetricsServer({"/metrics": broken}, port=0)
    await listener.start()
    try:
        response = await raw_exchange(listener.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await listener.stop()
    assert response.startswith(b"HTTP/1.1 500 ")
    assert "internal metrics endpoint raised" in caplog.text


def test_lives_with_the_app_under_a_real_uvicorn() -> None:
    """The wiring instrument() uses: lifespan hooks start and stop the listener."""

    async def public(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status = 200 if scope["path"] == "/hello" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"hi" if status == 200 else b""})

    port = free_port()
    listener = InternalMetricsServer({"/metrics": metrics_app(registry_with_sample())}, port=port)
    app = LifespanHooks(public, startup=[listener.start], shutdown=[listener.stop])
    with run_uvicorn(app) as server:
        assert http_get(f"{server.url}/hello")[0] == 200
        assert http_get(f"{server.url}/metrics")[0] == 404
        status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"orders_total 5.0" in body
    wait_until(lambda: not listener.running, timeout=5, what="listener stopped on shutdown")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_a_second_listener_on_the_same_port_fails_and_the_first_keeps_serving() -> None:
    """What happens under --workers N: the first worker binds, the others get the error."""
    first = InternalMetricsServer({"/metrics": metrics_app(registry_with_sample())}, port=0)
    await first.start()
    second = InternalMetricsServer({"/metrics": metrics_app(CollectorRegistry())}, port=first.port)
    try:
        with pytest.raises(OSError, match="address already in use"):
            await second.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}") as client:
            assert "orders_total 5.0" in (await client.get("/metrics")).text
    finally:
        await first.stop()


# --- multi-worker servers ---------------------------------------------------------------


def _worker_server_argv(kind: str, target: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            "uvicorn", "--factory", target, "--workers", "2",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    return [
        "gunicorn", "--workers", "2", "--worker-class", "uvicorn_worker.UvicornWorker",
        "--bind", f"127.0.0.1:{port}", "--no-control-socket", f"{target}()",
    ]  # fmt: skip


def _lines(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


@pytest.mark.realparts
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_workers_share_the_internal_port_and_one_warns(kind: str, tmp_path: Path) -> None:
    from tests.e2e.servers import serve, server_env

    if kind == "gunicorn":
        pytest.importorskip("uvicorn_worker", reason="the uvicorn-worker package is missing")
    port, internal = free_port(), free_port()
    argv = _worker_server_argv(kind, "tests.e2e.servers:observed_app", port)
    env = server_env(METRICS_INTERNAL_PORT=str(internal))
    with serve(argv, port=port, env=env, log=tmp_path / f"{kind}.log") as server:
        pids: set[int] = set()

        def every_worker_answered() -> bool:
            # A fresh connection per request, so the kernel spreads them over the workers.
            status, _, body = http_get(f"{server.url}/ping", headers={"Connection": "close"})
            assert status == 200
            pids.add(int(body))
            return len(pids) == 2

        wait_until(every_worker_answered, timeout=60, what="both workers to answer")
        status, _, body = http_get(f"http://127.0.0.1:{internal}/metrics")
        assert status == 200
        assert "http_requests_total" in body.decode()
        assert http_get(f"{server.url}/metrics")[0] == 404
        wait_until(
            lambda: bool(_lines(server.output(), "serves the app only")),
            timeout=30,
            what="the second worker's start-up line",
        )
        output = server.output()
    warnings = _lines(output, "PROMETHEUS_MULTIPROC_DIR")
    assert len(warnings) == 1, output
    assert warnings[0].startswith("WARNING asgi_observe")
    served_elsewhere = _lines(output, "another worker of this server serves")
    assert len(served_elsewhere) == 1, output
    assert served_elsewhere[0].startswith("INFO asgi_observe")
    assert "Application startup failed" not in output
    # The warning comes from the worker that serves the port, the info line from the other.
    warner = int(warnings[0].split("[")[1].split("]")[0])
    other = int(served_elsewhere[0].split("[")[1].split("]")[0])
    assert {warner, other} == pids


@pytest.mark.realparts
@pytest.mark.slow
def test_workers_with_a_multiprocess_dir_do_not_warn(tmp_path: Path) -> None:
    from tests.e2e.servers import serve, server_env

    port, internal = free_port(), free_port()
    directory = tmp_path / "mp"
    directory.mkdir()
    argv = _worker_server_argv("uvicorn", "tests.e2e.servers:observed_app", port)
    env = server_env(METRICS_INTERNAL_PORT=str(internal), PROMETHEUS_MULTIPROC_DIR=str(directory))
    with serve(argv, port=port, env=env, log=tmp_path / "uvicorn.log") as server:
        wait_until(
            lambda: bool(_lines(server.output(), "serves the app only")),
            timeout=30,
            what="the second worker's start-up line",
        )
        assert http_get(f"http://127.0.0.1:{internal}/metrics")[0] == 200
        output = server.output()
    assert not _lines(output, "PROMETHEUS_MULTIPROC_DIR"), output
