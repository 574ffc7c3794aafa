"""`RequestPipeline`: instrument()'s one-layer HTTP path behaves as the composed stack.

Each case sends the same request through `instrument()` (which serves it in one layer)
and through the composed middlewares it falls back to, each with its own registry and
spans, and compares what a user sees: the messages the server receives, the exception
raised, the access-log line, the Prometheus samples and the spans.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from asgi_observe import HealthApp, Settings, instrument
from asgi_observe.pipeline import RequestPipeline
from asgi_observe.stack import ObservedApp
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.logs.support import json_logs, lines, restore_logging

# Fields that differ between two runs of the same request.
__all__ = ["json_logs", "restore_logging"]  # fixtures used here

VARYING = {"duration_ms", "request_id", "trace_id", "span_id", "timestamp"}


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item": request.path_params["item_id"]})


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse((await request.body()).decode())


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def teapot(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=418)


async def own_id(request: Request) -> PlainTextResponse:
    return PlainTextResponse("mine", headers={"X-Request-Id": "app-chosen"})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for part in (b"a" * 10, b"b" * 20, b"c" * 30):
            yield part

    return StreamingResponse(chunks())


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("down", status_code=503)


async def failing_background(request: Request) -> PlainTextResponse:
    def fail() -> None:
        raise ValueError("after the response")

    return PlainTextResponse("ok", background=BackgroundTask(fail))


def starlette_app(file: Path) -> Starlette:
    async def download(request: Request) -> FileResponse:
        return FileResponse(file)

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/echo", echo, methods=["POST"]),
            Route("/boom", boom),
            Route("/teapot", teapot),
            Route("/own-id", own_id),
            Route("/stream", stream),
            Route("/unavailable", unavailable),
            Route("/background", failing_background),
            Route("/file", download),
        ]
    )


async def raw_raising_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        raise LookupError("before any response")


async def raw_start_then_raise(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise LookupError("after the start")


@dataclass
class Outcome:
    """What one request looked like from the outside."""

    messages: list[Message]
    error: str | None
    access: list[dict[str, Any]]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    spans: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def scope_for(
    path: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    extensions: dict[str, Any] | None = None,
    root_path: str = "",
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": b"page=2&token=secret",
        "headers": [(b"host", b"example.test"), (b"user-agent", b"pytest"), *headers],
        "client": ("203.0.113.9", 50000),
        "server": ("127.0.0.1", 8000),
        "extensions": extensions or {},
    }


async def drive(
    app: ASGIApp, scope: Scope, body: Sequence[bytes]
) -> tuple[list[Message], str | None]:
    chunks = list(body) or [b""]
    sent: list[Message] = []

    async def receive() -> Message:
        if chunks:
            part = chunks.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(chunks)}
        await asyncio.sleep(3600)  # a client that never disconnects within the test
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return sent, f"{type(exc).__name__}: {exc}"
    return sent, None


def comparable(message: Message) -> Message:
    """A sent message without the request id's value (each run draws its own)."""
    if message["type"] != "http.response.start":
        return message
    headers = [
        (name, b"<id>" if name.lower() == b"x-request-id" and value != b"app-chosen" else value)
        for name, value in message.get("headers", [])
    ]
    return {**message, "headers": headers}


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Counts and sizes of the HTTP families (durations and timestamps vary per run)."""
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.startswith("http_") or sample.name.endswith("_created"):
                continue
            if "duration" in sample.name and not sample.name.endswith("_count"):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def serve(
    build: Build,
    app: ASGIApp,
    scope: Scope,
    body: Sequence[bytes],
    *,
    stream: io.StringIO,
    sampler: Sampler,
) -> Outcome:
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    served = build(app, registry, provider)
    stream.seek(0)
    stream.truncate()
    messages, error = await drive(served, scope, body)
    access = [
        {k: v for k, v in line.items() if k not in VARYING}
        for line in lines(stream)
        if line.get("logger") == "asgi_observe.access"
    ]
    spans = [
        (span.name, {k: v for k, v in (span.attributes or {}).items() if k != "request_id"})
        for span in exporter.get_finished_spans()
    ]
    provider.shutdown()
    return Outcome([comparable(m) for m in messages], error, access, samples(registry), spans)


Build = Callable[[ASGIApp, CollectorRegistry, TracerProvider], ASGIApp]


def without_response_size(outcome: Outcome) -> None:
    """`outcome` without its response body and whatever tells that body's size (the
    ``content-length`` header, the access line's ``response_size``, the response-size
    histogram): for responses whose content varies from run to run."""
    outcome.messages = [
        {**m, "headers": [(k, v) for k, v in m.get("headers", []) if k != b"content-length"]}
        for m in outcome.messages
        if m["type"] != "http.response.body"
    ]
    outcome.access = [
        {k: v for k, v in line.items() if k != "response_size"} for line in outcome.access
    ]
    outcome.samples = {
        key: value
        for key, value in outcome.samples.items()
        if not key[0].startswith("http_response_size_bytes")
    }


def one_layer_with(settings: Settings) -> Build:
    def build(app: ASGIApp, registry: CollectorRegistry, provider: TracerProvider) -> ASGIApp:
        served = instrument(
            app, settings, registry=registry, tracer_provider=provider, health=HealthApp()
        )
        assert isinstance(served.pipeline, RequestPipeline)
        return served

    return build


def composed_with(settings: Settings) -> Build:
    def build(app: ASGIApp, registry: CollectorRegistry, provider: TracerProvider) -> ASGIApp:
        served = one_layer_with(settings)(app, registry, provider)
        assert isinstance(served, ObservedApp)
        assert isinstance(served.pipeline, RequestPipeline)
        return served.pipeline.composed

    return build


PRODUCTION = Settings(environment="production")
one_layer = one_layer_with(PRODUCTION)


async def serve_both(  # noqa: PLR0917 - what one comparison needs
    settings: Settings,
    app: ASGIApp,
    new_scope: Callable[[], Scope],
    body: Sequence[bytes],
    stream: io.StringIO,
    sampler: Sampler,
) -> tuple[Outcome, Outcome]:
    """The same request through the one layer, then through the composed middlewares."""
    fused = await serve(
        one_layer_with(settings), app, new_scope(), body, stream=stream, sampler=sampler
    )
    reference = await serve(
        composed_with(settings), app, new_scope(), body, stream=stream, sampler=sampler
    )
    return fused, reference


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "report.txt"
    path.write_bytes(b"x" * 1234)
    return path


CASES: dict[str, tuple[str, dict[str, Any], list[bytes]]] = {
    "route": ("/items/42", {}, []),
    "unmatched": ("/nowhere", {}, []),
    "body": ("/echo", {"method": "POST"}, [b"hello ", b"world"]),
    "exception": ("/boom", {}, []),
    "4xx": ("/teapot", {}, []),
    "5xx without exception": ("/unavailable", {}, []),
    "app sets the id": ("/own-id", {}, []),
    "streamed": ("/stream", {}, []),
    "failing background task": ("/background", {}, []),
    "valid incoming id": ("/items/1", {"headers": [(b"x-request-id", b"abc-123")]}, []),
    "invalid incoming id": ("/items/1", {"headers": [(b"x-request-id", b"bad id!")]}, []),
    "file": ("/file", {}, []),
    "file with pathsend": ("/file", {"extensions": {"http.response.pathsend": {}}}, []),
    "under root_path": ("/items/7", {"root_path": "/api"}, []),
    "probe": ("/health/live", {}, []),
    "metrics endpoint": ("/metrics", {}, []),
    "excluded method": ("/items/1", {"method": "OPTIONS"}, []),
}


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ALWAYS_ON], ids=["unsampled", "sampled"])
@pytest.mark.parametrize("case", CASES)
async def test_one_layer_serves_as_the_composed_stack(
    case: str, sampler: Sampler, file: Path, json_logs: io.StringIO
) -> None:
    path, options, body = CASES[case]
    app = starlette_app(file)
    fused, reference = await serve_both(
        PRODUCTION, app, lambda: scope_for(path, **options), body, json_logs, sampler
    )
    assert fused == reference
    assert fused.access or path in ("/health/live", "/metrics")  # a line per app request


@pytest.mark.parametrize("app", [raw_raising_app, raw_start_then_raise])
async def test_an_app_raising_is_recorded_alike(app: ASGIApp, json_logs: io.StringIO) -> None:
    fused, reference = await serve_both(
        PRODUCTION, app, lambda: scope_for("/x"), [], json_logs, ALWAYS_OFF
    )
    assert fused == reference
    assert fused.error is not None
    assert fused.error.startswith("LookupError")
    (line,) = fused.access
    assert line["error"].startswith("LookupError")
    assert (line["status"], line["level"]) == (
        (500, "error") if app is raw_raising_app else (200, "info")
    )


async def test_the_request_id_is_shared_by_header_log_and_context(
    file: Path, json_logs: io.StringIO
) -> None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        from asgi_observe import get_request_id

        seen.append(get_request_id())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = one_layer(app, CollectorRegistry(), TracerProvider(sampler=ALWAYS_OFF))
    messages, error = await drive(served, scope_for("/x"), [])
    assert error is None
    header = dict(messages[0]["headers"])[b"x-request-id"].decode()
    (line,) = [line for line in lines(json_logs) if line.get("logger") == "asgi_observe.access"]
    assert seen == [header] == [line["request_id"]]
    assert line["trace_id"] is not None
    assert len(line["trace_id"]) == 32


def _variants(tmp_path: Path) -> dict[str, Settings]:
    return {
        "metrics off": Settings(environment="production", enable_metrics=False),
        "OTEL_SDK_DISABLED": Settings(environment="production", sdk_disabled=True),
        "multiprocess gauges": Settings(
            environment="production", prometheus_multiproc_dir=str(tmp_path)
        ),
    }


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ALWAYS_ON], ids=["unsampled", "sampled"])
@pytest.mark.parametrize("variant", ["metrics off", "OTEL_SDK_DISABLED", "multiprocess gauges"])
@pytest.mark.parametrize(
    "case", ["route", "unmatched", "body", "exception", "5xx without exception", "streamed"]
)
async def test_one_layer_serves_as_the_composed_stack_in_other_set_ups(  # noqa: PLR0917 - parameters and fixtures
    case: str, variant: str, sampler: Sampler, file: Path, tmp_path: Path, json_logs: io.StringIO
) -> None:
    settings = _variants(tmp_path)[variant]
    path, options, body = CASES[case]
    app = starlette_app(file)
    fused, reference = await serve_both(
        settings, app, lambda: scope_for(path, **options), body, json_logs, sampler
    )
    assert fused == reference
    assert len(fused.access) == 1
    assert bool(fused.samples) is (variant != "metrics off")
    assert bool(fused.spans) is (variant != "OTEL_SDK_DISABLED" and sampler is ALWAYS_ON)
    if variant == "multiprocess gauges":
        # Counted as the response started (the series exists), and back to 0 at the end.
        gauges = {k: v for k, v in fused.samples.items() if k[0] == "http_requests_in_progress"}
        assert gauges
        assert set(gauges.values()) == {0.0}


EXCLUDING = Settings(
    environment="production",
    access_log_exclude_paths=("/quiet",),
    metrics_exclude_paths=("/unmetered",),
    metrics_exclude_methods=("options",),  # compared in upper case, as the metrics do
)
# Nothing excludes the stack's own endpoints here: the one layer must still leave them.
PATTERNS = Settings(
    environment="production", excluded_urls=("untraced",), access_log_exclude_paths=()
)

# settings, path (below root_path), method, whether a middleware excludes the request
# (or the stack serves it itself), so that the one layer must leave it to them.
EXCLUSION_CASES: dict[str, tuple[Settings, str, str, bool]] = {
    "app route": (EXCLUDING, "/items/1", "GET", False),
    "access log exclusion": (EXCLUDING, "/quiet", "GET", True),
    "metrics exclusion": (EXCLUDING, "/unmetered", "GET", True),
    "metrics method exclusion": (EXCLUDING, "/items/1", "OPTIONS", True),
    "metrics endpoint": (EXCLUDING, "/metrics", "GET", True),
    "health mount": (EXCLUDING, "/health", "GET", True),
    "health probe": (EXCLUDING, "/health/live", "GET", True),
    "a path that only starts like the health mount": (EXCLUDING, "/healthcare", "GET", False),
    "tracing exclusion": (EXCLUDING, "/favicon.ico", "GET", True),
    "tracing pattern": (PATTERNS, "/items/untraced", "GET", True),
    "no pattern matches": (PATTERNS, "/items/1", "GET", False),
    "traced once patterns replace the defaults": (PATTERNS, "/favicon.ico", "GET", False),
    "own endpoint, excluded by no middleware": (PATTERNS, "/metrics", "GET", True),
    "health mount, excluded by no middleware": (PATTERNS, "/health", "GET", True),
    "health probe, excluded by no middleware": (PATTERNS, "/health/ready", "GET", True),
}


@pytest.mark.parametrize("root_path", ["", "/api"], ids=["no root_path", "under root_path"])
@pytest.mark.parametrize("case", EXCLUSION_CASES)
async def test_the_one_layer_leaves_exactly_the_excluded_requests_to_the_middlewares(
    case: str, root_path: str, file: Path, json_logs: io.StringIO
) -> None:
    """The one layer decides which requests it takes from the exclusions `instrument()`
    gave the middlewares (one lookup), or, behind a root_path, by asking each of them:
    either way it takes exactly the requests none of them excludes."""
    settings, path, method, excluded = EXCLUSION_CASES[case]
    fell_back: list[str] = []

    def spied(app: ASGIApp, registry: CollectorRegistry, provider: TracerProvider) -> ASGIApp:
        served = one_layer_with(settings)(app, registry, provider)
        assert isinstance(served, ObservedApp)
        assert isinstance(served.pipeline, RequestPipeline)
        composed = served.pipeline.composed

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            fell_back.append(scope["path"])
            await composed(scope, receive, send)

        served.pipeline.composed = recording
        return served

    def new_scope() -> Scope:
        return scope_for(path, method=method, root_path=root_path)

    fused = await serve(
        spied, starlette_app(file), new_scope(), [], stream=json_logs, sampler=ALWAYS_OFF
    )
    reference = await serve(
        composed_with(settings),
        starlette_app(file),
        new_scope(),
        [],
        stream=json_logs,
        sampler=ALWAYS_OFF,
    )
    if path == "/health":  # the report's body has a timestamp and the uptime: so its size varies
        for outcome in (fused, reference):
            without_response_size(outcome)
    assert fused == reference
    assert fell_back == ([root_path + path] if excluded else [])
