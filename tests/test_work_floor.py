"""The benchmarks' work floor does the work it stands for.

`bench.work_floor.WorkFloor` is the yardstick `instrument()` is compared with: if it
skipped part of the work (no line, no span for the sampled share, no count) the floor
would look cheaper than the work is. These tests pin that it does all of it.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from asgi_observe.types import Message
from bench.harness import make_scope
from bench.http_apps import bare_app
from bench.work_floor import WorkFloor


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def get(app: WorkFloor, path: str) -> Answer:
    """One GET through the app, as a server would drive it."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(make_scope(path), receive, send))
    start, *bodies = sent
    body = b"".join(message.get("body", b"") for message in bodies)
    return Answer(start["status"], dict(start["headers"]), body)


def _floor(ratio: float) -> tuple[WorkFloor, InMemorySpanExporter, io.StringIO]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    floor = WorkFloor(bare_app(), tracer=provider.get_tracer("t"), ratio=ratio, stream=stream)
    return floor, exporter, stream


def test_every_request_gets_an_id_a_line_and_a_count() -> None:
    floor, exporter, stream = _floor(0.0)
    responses = [get(floor, f"/items/{n}") for n in range(5)]
    assert get(floor, "/nowhere").status == 404

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 6
    ids = [response.headers[b"x-request-id"].decode() for response in responses]
    assert len(set(ids)) == 5
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)
    first = lines[0]
    assert first["request_id"] == ids[0]
    assert first["route"] == "/items/{item_id}"
    assert first["path"] == "/items/0?q=1"  # the benchmarks' scope has a query
    assert first["status"] == 200
    assert first["user_agent"] == "bench/1.0"
    assert first["client_ip"] == "127.0.0.1"
    assert first["response_size"] == len(responses[0].body)
    assert len(first["trace_id"]) == 32
    assert len(first["span_id"]) == 16
    assert first["timestamp"].endswith("Z")
    assert lines[-1]["status"] == 404
    assert lines[-1]["level"] == "warning"
    assert lines[-1]["route"] is None
    assert floor.counts == {("GET", "/items/{item_id}", 200): 5, ("GET", None, 404): 1}
    histogram = floor.histograms[("GET", "/items/{item_id}", 200)]
    assert sum(histogram[:-1]) == 5
    assert histogram[-1] > 0
    assert exporter.get_finished_spans() == ()  # 0 %: nothing recorded


def test_the_sampled_share_gets_an_sdk_span_with_attributes() -> None:
    floor, exporter, stream = _floor(1.0)
    response = get(floor, "/items/7")

    (span,) = exporter.get_finished_spans()
    line = json.loads(stream.getvalue())
    assert span.name == "GET /items/{item_id}"
    assert span.kind is trace.SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/items/{item_id}"
    assert span.attributes["request_id"] == response.headers[b"x-request-id"].decode()
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_the_ratio_is_kept_on_the_trace_id(ratio: float) -> None:
    floor, exporter, _ = _floor(ratio)
    for n in range(400):
        assert get(floor, f"/items/{n}").status == 200

    sampled = len(exporter.get_finished_spans())
    # Binomial(400, ratio): more than 5 standard deviations off would be a wrong rule.
    spread = 5 * (400 * ratio * (1 - ratio)) ** 0.5
    assert abs(sampled - 400 * ratio) < spread
