"""The unsampled request span's shortcut (`asgi_observe.tracing.starter`): the span
context the SDK would give, the SDK sampler's decision taken for one trace id per request,
no trace id handed to another span, and the SDK's own path wherever the shortcut could
differ."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.settings import BUILTIN_SAMPLERS, Settings
from asgi_observe.tracing import TracingMiddleware, setup_tracing, shutdown_tracing, starter, tracer
from asgi_observe.tracing import api as tracing_api
from asgi_observe.tracing.api import INSTRUMENTATION_NAME
from asgi_observe.tracing.starter import SpanStarter, TraceIdHandover
from asgi_observe.types import ASGIApp, Receive, Scope, Send
from tests.logs.support import RecordingLogger

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN_ID = 0x00F067AA0BA902B7


def traceparent(flags: str) -> str:
    return f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-{flags}"


class Seen:
    """What the app saw of the current span, per request path."""

    def __init__(self) -> None:
        self.spans: dict[str, trace.Span] = {}

    def context(self, path: str) -> SpanContext:
        return self.spans[path].get_span_context()

    def app(self) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            self.spans[scope["path"]] = trace.get_current_span()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return app


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def built() -> Iterator[list[TracerProvider]]:
    """Providers the test built with `setup_tracing`, shut down afterwards."""
    providers: list[TracerProvider] = []
    yield providers
    for provider in providers:
        shutdown_tracing(provider)


def ours(
    built: list[TracerProvider], sampler: str, ratio: float = 1.0
) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = setup_tracing(Settings(sampler=sampler, sampler_ratio=ratio), set_global=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    built.append(provider)
    return provider, exporter


def server_ids(exporter: InMemorySpanExporter) -> dict[str, tuple[int, int]]:
    """url.path → (trace id, span id) of every exported SERVER span."""
    found: dict[str, tuple[int, int]] = {}
    for span in exporter.get_finished_spans():
        if span.kind is SpanKind.SERVER and span.context is not None:
            path = str((span.attributes or {})["url.path"])
            assert path not in found, f"two spans for {path}"
            found[path] = (span.context.trace_id, span.context.span_id)
    return found


# --- when the shortcut applies ----------------------------------------------------------


@pytest.mark.parametrize("sampler", sorted(BUILTIN_SAMPLERS))
def test_providers_of_setup_tracing_take_the_shortcut(
    built: list[TracerProvider], sampler: str
) -> None:
    provider, _ = ours(built, sampler, 0.5)
    assert SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast


def test_other_providers_keep_the_sdk_path(provider: TracerProvider) -> None:
    assert not SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast
    assert not SpanStarter(trace.NoOpTracer()).fast


def test_sdk_span_metrics_keep_the_sdk_path(
    built: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own span metrics count dropped spans inside ``start_span``."""
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    provider, _ = ours(built, "parentbased_traceidratio", 0.0)
    assert not SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast


async def test_an_sdk_building_other_contexts_keeps_its_own_path(
    built: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut is taken only where the installed SDK, probed, agrees with it: here
    an SDK whose generator says its trace ids are not random (so roots carry no
    random-trace-id flag, which the shortcut would set)."""
    monkeypatch.setattr(starter, "_agreement", [])  # the probe runs again, here
    monkeypatch.setattr(TraceIdHandover, "is_trace_id_random", lambda self: False)
    provider, _ = ours(built, "parentbased_traceidratio", 0.0)
    assert not SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast
    seen = Seen()
    async with client(TracingMiddleware(seen.app(), tracer_provider=provider)) as http:
        await http.get("/p")
    context = seen.context("/p")
    assert context.is_valid
    assert context.trace_flags == 0  # the SDK's flags, not the shortcut's


# --- the same span context as the SDK's --------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "flags", "tracestate"),
    [
        ("parentbased_traceidratio", None, None),  # a root span
        ("parentbased_traceidratio", "00", "vendor=value,other=1"),
        ("parentbased_traceidratio", "02", "vendor=value"),  # W3C level 2: random trace id
        ("parentbased_always_off", None, None),
        ("always_off", "01", "vendor=value"),  # a sampled parent, dropped all the same
        ("always_off", "03", None),
        ("traceidratio", None, None),
    ],
)
async def test_unsampled_context_is_the_sdks(
    built: list[TracerProvider], sampler: str, flags: str | None, tracestate: str | None
) -> None:
    provider, exporter = ours(built, sampler, 0.0)
    headers = {}
    if flags is not None:
        headers["traceparent"] = traceparent(flags)
    if tracestate is not None:
        headers["tracestate"] = tracestate
    seen = Seen()
    async with client(TracingMiddleware(seen.app(), tracer_provider=provider)) as http:
        assert (await http.get("/u", headers=headers)).status_code == 200
    span = seen.spans["/u"]
    ours_ = span.get_span_context()
    # What the SDK itself starts under the same parent, with the same provider.
    parent = propagate.extract(headers) if headers else otel_context.Context()
    sdk_span = provider.get_tracer(INSTRUMENTATION_NAME).start_span("GET", parent, SpanKind.SERVER)
    theirs = sdk_span.get_span_context()
    assert type(span) is type(sdk_span) is NonRecordingSpan
    assert ours_.is_valid
    assert theirs.is_valid
    assert not ours_.trace_flags.sampled
    assert ours_.trace_flags == theirs.trace_flags
    assert ours_.trace_state == theirs.trace_state
    assert ours_.is_remote is theirs.is_remote is False
    if flags is None:
        assert ours_.trace_id != theirs.trace_id  # each root draws its own
    else:
        assert ours_.trace_id == theirs.trace_id == TRACE_ID  # the caller's trace goes on
        assert ours_.span_id != PARENT_SPAN_ID
    if tracestate is not None:
        assert ours_.trace_state.get("vendor") == "value"
    assert exporter.get_finished_spans() == ()


def _remote_parent(trace_id: int, flags: int) -> otel_context.Context:
    parent = SpanContext(
        trace_id, PARENT_SPAN_ID, is_remote=True, trace_flags=trace.TraceFlags(flags)
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def test_each_context_gives_its_own_parent_whatever_came_before(
    built: list[TracerProvider],
) -> None:
    """The starter remembers what it read from the last context: reused for that same
    context only, never for another one, nor for None (whatever context is current)."""
    provider, _ = ours(built, "parentbased_traceidratio", 0.0)
    spans = SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME))
    assert spans.fast
    root = otel_context.Context()
    level1 = _remote_parent(TRACE_ID, 0x00)
    level2 = _remote_parent(TRACE_ID + 1, 0x02)  # W3C level 2: random trace id

    def started(parent: otel_context.Context | None) -> SpanContext:
        span = spans.start("GET", parent)
        assert not span.is_recording()
        return span.get_span_context()

    roots = [started(root) for _ in range(3)]
    assert len({context.trace_id for context in roots}) == 3  # each root draws its own
    assert {context.trace_id for context in roots}.isdisjoint({TRACE_ID, TRACE_ID + 1})
    for parent, trace_id, flags in [
        (level1, TRACE_ID, 0x00),
        (level1, TRACE_ID, 0x00),
        (level2, TRACE_ID + 1, 0x02),
        (level1, TRACE_ID, 0x00),
    ]:
        context = started(parent)
        assert (context.trace_id, context.trace_flags) == (trace_id, flags)
    after = started(root)
    assert after.trace_id not in {TRACE_ID, TRACE_ID + 1, *(c.trace_id for c in roots)}
    assert after.trace_flags == 0x02  # a root's trace id is random
    # None stands for the current context, read at each call: never a remembered one.
    token = otel_context.attach(level2)
    try:
        assert started(None).trace_id == TRACE_ID + 1
        assert started(level2).trace_id == TRACE_ID + 1
    finally:
        otel_context.detach(token)
    assert started(None).trace_id != TRACE_ID + 1
    assert started(level2).trace_id == TRACE_ID + 1
    # Passed as `current` (the context `parent` stands for), the same rule holds.
    assert spans.start("GET", None, current=level1).get_span_context().trace_id == TRACE_ID


async def test_log_lines_of_unsampled_requests_carry_their_ids(
    built: list[TracerProvider],
) -> None:
    provider, _ = ours(built, "parentbased_traceidratio", 0.0)
    logger = RecordingLogger()
    seen = Seen()
    app = TracingMiddleware(
        AccessLogMiddleware(seen.app(), logger=logger), tracer_provider=provider
    )
    async with client(app) as http:
        await http.get("/logged")
        await http.get("/logged-too", headers={"traceparent": traceparent("00")})
    fields = {record[2]["path"]: record[2] for record in logger.records}
    for path in ("/logged", "/logged-too"):
        context = seen.context(path)
        assert context.is_valid
        assert (fields[path]["trace_id"], fields[path]["span_id"]) == (
            format(context.trace_id, "032x"),
            format(context.span_id, "016x"),
        )
    assert fields["/logged-too"]["trace_id"] == format(TRACE_ID, "032x")


# --- one decision per request, the SDK sampler's ---------------------------------------


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
async def test_exactly_the_trace_ids_under_the_ratio_bound_are_exported(
    built: list[TracerProvider], sampler: str
) -> None:
    provider, exporter = ours(built, sampler, 0.25)
    seen = Seen()
    async with client(TracingMiddleware(seen.app(), tracer_provider=provider)) as http:
        for i in range(400):
            await http.get(f"/r/{i}")
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    seen_ids = {
        path: (span.get_span_context().trace_id, span.get_span_context().span_id)
        for path, span in seen.spans.items()
    }
    expected = {
        path: ids
        for path, ids in seen_ids.items()
        if ids[0] & TraceIdRatioBased.TRACE_ID_LIMIT < bound
    }
    assert server_ids(exporter) == expected  # the span exported is the one the app saw
    assert 0 < len(expected) < 400
    for path, span in seen.spans.items():
        assert span.get_span_context().trace_flags.sampled is (path in expected)
        assert isinstance(span, NonRecordingSpan) is (path not in expected)


class CountingSampler(Sampler):
    """Drops or samples at random, and counts its calls and its yeses."""

    def __init__(self) -> None:
        self.calls = 0
        self.sampled = 0
        self._random = random.Random(7)

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.calls += 1
        if self._random.random() < 0.5:
            self.sampled += 1
            return SamplingResult(Decision.RECORD_AND_SAMPLE)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "CountingSampler"


def coin_sampler(argument: str) -> Sampler:
    """The factory of the ``coin`` entry point made by `coin_entry_point`."""
    return COIN


COIN = CountingSampler()


@pytest.fixture
def coin_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CountingSampler:
    """An installed distribution registering `coin_sampler` as the ``coin`` sampler."""
    info = tmp_path / "coin_sampler-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: coin-sampler\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_traces_sampler]\ncoin = {__name__}:coin_sampler\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    COIN.calls = COIN.sampled = 0
    return COIN


async def test_an_entry_point_sampler_decides_once_per_request(
    built: list[TracerProvider], coin_entry_point: CountingSampler
) -> None:
    """A sampler whose decision is random must never be asked twice for one request."""
    provider, exporter = ours(built, "coin")
    assert not SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast
    seen = Seen()
    async with client(TracingMiddleware(seen.app(), tracer_provider=provider)) as http:
        for i in range(60):
            await http.get(f"/c/{i}")
    assert coin_entry_point.calls == 60
    assert 0 < coin_entry_point.sampled < 60
    assert len(server_ids(exporter)) == coin_entry_point.sampled
    assert all(seen.context(p).is_valid for p in seen.spans)


async def test_a_sampler_set_on_the_tracer_later_is_the_one_asked(
    built: list[TracerProvider],
) -> None:
    provider, exporter = ours(built, "always_off")
    app = TracingMiddleware(Seen().app(), tracer_provider=provider)
    replaced = CountingSampler()
    provider.get_tracer(INSTRUMENTATION_NAME).sampler = replaced  # type: ignore[attr-defined]
    async with client(app) as http:
        for i in range(40):
            await http.get(f"/s/{i}")
    assert replaced.calls == 40
    assert len(server_ids(exporter)) == replaced.sampled > 0


# --- the hand-over never reaches another span -------------------------------------------


async def test_spans_the_app_starts_get_their_own_trace_or_the_right_parent(
    built: list[TracerProvider],
) -> None:
    provider, exporter = ours(built, "always_on")
    made: dict[str, SpanContext] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        made["request"] = trace.get_current_span().get_span_context()
        with tracer.start_as_current_span("child") as child:
            made["child"] = child.get_span_context()
        fresh = tracer.start_span("fresh root", context=otel_context.Context())
        made["fresh"] = fresh.get_span_context()
        fresh.end()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client(TracingMiddleware(app, tracer_provider=provider)) as http:
        await http.get("/h")
    after = provider.get_tracer("t").start_span("after", context=otel_context.Context())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request = made["request"]
    assert spans["GET"].context is not None
    assert spans["GET"].context.trace_id == request.trace_id
    assert spans["child"].parent is not None
    assert spans["child"].parent.span_id == request.span_id
    assert made["child"].trace_id == request.trace_id
    assert made["fresh"].trace_id != request.trace_id
    assert after.get_span_context().trace_id != request.trace_id


def test_a_handed_over_trace_id_stays_on_its_thread() -> None:
    generator = TraceIdHandover(ALWAYS_OFF)
    generator.hand_over(TRACE_ID)
    elsewhere: list[int] = []
    thread = threading.Thread(target=lambda: elsewhere.append(generator.generate_trace_id()))
    thread.start()
    thread.join()
    assert elsewhere[0] != TRACE_ID
    assert generator.generate_trace_id() == TRACE_ID  # taken once, here
    assert generator.generate_trace_id() != TRACE_ID
    generator.hand_over(TRACE_ID)
    generator.hand_over(None)  # withdrawn
    assert generator.generate_trace_id() != TRACE_ID
    assert generator.draw_trace_id() != generator.draw_trace_id()


def test_requests_on_several_threads_keep_their_own_trace_ids(
    built: list[TracerProvider],
) -> None:
    """Four event loops on four threads share one middleware (as several workers'
    threads would); every exported span is the one its own request saw."""
    provider, exporter = ours(built, "traceidratio", 0.5)
    seen = Seen()
    app = TracingMiddleware(seen.app(), tracer_provider=provider)

    async def requests(thread: int) -> None:
        async with client(app) as http:
            for i in range(50):
                await http.get(f"/t{thread}/{i}")

    threads = [threading.Thread(target=asyncio.run, args=(requests(t),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen.spans) == 200
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    expected = {
        path: (span.get_span_context().trace_id, span.get_span_context().span_id)
        for path, span in seen.spans.items()
        if span.get_span_context().trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound
    }
    assert server_ids(exporter) == expected
    assert len({span.get_span_context().trace_id for span in seen.spans.values()}) == 200


class SamplesThenRaises(Sampler):
    """Samples its first call and raises on the next: the SDK's own call, made after the
    trace id was handed over."""

    def __init__(self) -> None:
        self.trace_ids: list[int] = []

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.trace_ids.append(trace_id)
        if len(self.trace_ids) % 2 == 0:
            msg = "sampler bug"
            raise RuntimeError(msg)
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "SamplesThenRaises"


async def test_a_failing_sampler_leaves_the_request_untraced_and_nothing_pending(
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing_api, "_reported", set())  # "once per process" starts here
    sampler = SamplesThenRaises()
    generator = TraceIdHandover(sampler)
    provider = TracerProvider(sampler=sampler, id_generator=generator, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = TracingMiddleware(Seen().app(), tracer_provider=provider)
    assert SpanStarter(provider.get_tracer(INSTRUMENTATION_NAME)).fast
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        async with client(app) as http:
            statuses = [(await http.get(f"/f/{i}")).status_code for i in range(3)]
    assert statuses == [200, 200, 200]
    reports = [r for r in caplog.records if r.name == "asgi_observe"]
    assert len(reports) == 1
    assert "not traced" in reports[0].getMessage()
    assert exporter.get_finished_spans() == ()
    # Each request drew one trace id and asked twice about it (ours, then the SDK's).
    drawn = sampler.trace_ids[::2]
    assert sampler.trace_ids[1::2] == drawn
    assert len(set(drawn)) == 3
    assert generator.generate_trace_id() not in drawn  # withdrawn after the failure
    provider.shutdown()


# --- the global provider ---------------------------------------------------------------


def test_a_global_provider_installed_later_decides_once_per_request(tmp_path: Path) -> None:
    """A middleware built before `setup_tracing` installs the global provider uses it,
    with the same outcome as the SDK's path. Run apart: OpenTelemetry installs a global
    provider once per process."""
    script = tmp_path / "global_provider.py"
    script.write_text(
        "import asyncio, json\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "from opentelemetry.sdk.trace.sampling import TraceIdRatioBased\n"
        "from asgi_observe.settings import Settings\n"
        "from asgi_observe.tracing import TracingMiddleware, setup_tracing\n"
        "from asgi_observe.tracing.api import INSTRUMENTATION_NAME\n"
        "from asgi_observe.tracing.starter import SpanStarter\n"
        "app_seen = {}\n"
        "async def app(scope, receive, send):\n"
        "    app_seen[scope['path']] = trace.get_current_span().get_span_context()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b''})\n"
        "middleware = TracingMiddleware(app)\n"
        "provider = setup_tracing(Settings(sampler='traceidratio', sampler_ratio=0.25))\n"
        "exporter = InMemorySpanExporter()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "async def main():\n"
        "    async def receive():\n"
        "        return {'type': 'http.request', 'body': b'', 'more_body': False}\n"
        "    async def send(message):\n"
        "        pass\n"
        "    for i in range(200):\n"
        "        scope = {'type': 'http', 'method': 'GET', 'path': f'/g/{i}', 'headers': [],\n"
        "                 'query_string': b'', 'root_path': '', 'scheme': 'http'}\n"
        "        await middleware(scope, receive, send)\n"
        "asyncio.run(main())\n"
        "bound = TraceIdRatioBased.get_bound_for_rate(0.25)\n"
        "expected = sorted(c.trace_id for c in app_seen.values()\n"
        "                  if c.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound)\n"
        "exported = sorted(s.context.trace_id for s in exporter.get_finished_spans())\n"
        "print(json.dumps({\n"
        "    'fast': SpanStarter(trace.get_tracer_provider().get_tracer(INSTRUMENTATION_NAME))"
        ".fast,\n"
        "    'valid': all(c.is_valid for c in app_seen.values()),\n"
        "    'same': exported == expected, 'exported': len(exported),\n"
        "}))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["fast"] is True
    assert outcome["valid"] is True
    assert outcome["same"] is True
    assert 0 < outcome["exported"] < 200
