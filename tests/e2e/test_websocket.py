"""instrument() end to end on a websocket: real uvicorn, a real websocket client.

One connection to a Starlette ``WebSocketRoute("/ws/{room}")`` must show up as the four
websocket families labelled by the template on ``/metrics``, one SERVER span named by the
template with the close code, and one access-log line, all carrying the request id.
"""

from __future__ import annotations

import importlib.util
import io
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from asgi_observe import Settings, instrument
from tests.logs.support import json_logs, lines, restore_logging
from tests.support import http_get, require, run_uvicorn, wait_until

__all__ = ["json_logs", "restore_logging"]  # fixtures used below

pytestmark = pytest.mark.realparts

TEMPLATE = "/ws/{room}"


async def room(websocket: WebSocket) -> None:
    """Echo until the client says bye; answer it and close with 4001."""
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        if text == "bye":
            await websocket.send_text("ciao")
            await websocket.close(code=4001, reason="done")
            return
        await websocket.send_text(f"{websocket.path_params['room']}:{text}")


def scrape(url: str) -> dict[str, float]:
    """Every sample of the websocket families with handler=TEMPLATE, keyed by name and labels."""
    status, _, body = http_get(f"{url}/metrics")
    assert status == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("websocket_") and sample.labels.get("handler") == TEMPLATE:
                extra = ",".join(
                    f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "handler"
                )
                found[f"{sample.name}{{{extra}}}"] = sample.value
    return found


def test_websocket_connection_through_instrument(json_logs: io.StringIO) -> None:
    require(importlib.util.find_spec("websockets") is not None, "websockets is not installed")
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = instrument(
        Starlette(routes=[WebSocketRoute(TEMPLATE, room)]),
        Settings(),
        registry=CollectorRegistry(),
        tracer_provider=provider,
    )
    try:
        with run_uvicorn(app) as server:
            ws_url = f"ws://{server.host}:{server.port}/ws/kitchen?token=s3cret"
            with connect(ws_url, additional_headers={"X-Request-ID": "ws-e2e-1"}) as ws:
                assert ws.response is not None
                assert ws.response.headers["X-Request-ID"] == "ws-e2e-1"
                ws.send("hello")
                assert ws.recv(timeout=10) == "kitchen:hello"
                ws.send("world")
                assert ws.recv(timeout=10) == "kitchen:world"
                ws.send("bye")
                assert ws.recv(timeout=10) == "ciao"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4001

            # Counted once the app has returned, which follows the close handshake.
            samples: dict[str, float] = {}

            def counted() -> bool:
                samples.update(scrape(server.url))
                return samples.get("websocket_connections_total{outcome=accepted}") == 1

            wait_until(counted, timeout=10, what="the websocket connection on /metrics")
            assert samples["websocket_connections_active{}"] == 0
            assert samples["websocket_connection_duration_seconds_count{}"] == 1
            assert samples["websocket_messages_total{direction=received}"] == 3
            assert samples["websocket_messages_total{direction=sent}"] == 3

            def span_ended() -> list[ReadableSpan]:
                return [s for s in exporter.get_finished_spans() if s.name == TEMPLATE]

            wait_until(lambda: bool(span_ended()), timeout=10, what="the connection's span")
            access: list[dict[str, Any]] = []

            def logged() -> bool:
                access[:] = [
                    entry
                    for entry in lines(json_logs)
                    if entry.get("logger") == "asgi_observe.access"
                    and entry.get("event") == "websocket"
                ]
                return bool(access)

            wait_until(logged, timeout=10, what="the websocket access line")
    finally:
        provider.shutdown()

    [span] = span_ended()
    assert span.attributes is not None
    assert span.attributes["websocket.close.code"] == 4001
    assert span.attributes["http.route"] == TEMPLATE
    assert span.attributes["request_id"] == "ws-e2e-1"
    assert span.attributes["url.scheme"] == "ws"
    assert "s3cret" not in json.dumps(dict(span.attributes))

    [line] = access
    assert line["route"] == TEMPLATE
    assert line["outcome"] == "accepted"
    assert line["close_code"] == 4001
    assert (line["messages_received"], line["messages_sent"]) == (3, 3)
    assert line["request_id"] == "ws-e2e-1"
    assert span.context is not None
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["path"] == "/ws/kitchen?token=[REDACTED]"
