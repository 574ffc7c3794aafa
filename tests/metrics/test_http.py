"""MetricsMiddleware: names, labels, values, failure paths and bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_openmetrics
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from asgi_observe import MetricsMiddleware
from asgi_observe.routes import OVERFLOW_LABEL, UNMATCHED_LABEL
from asgi_observe.types import Message, Receive, Scope, Send
from tests.metrics.helpers import label_values, value

REQUESTS = "http_requests_total"


def generate_openmetrics(registry: CollectorRegistry) -> bytes:
    return _generate_openmetrics(registry)  # type: ignore[no-untyped-call,no-any-return]


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, status_code=201)


async def item(request: Request) -> PlainTextResponse:
    if request.path_params["item_id"] == "404":
        return PlainTextResponse("no such item", status_code=404)
    return PlainTextResponse("x" * 10)


async def boom(request: Request) -> Response:
    raise RuntimeError("app bug")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"a" * 1000

    return StreamingResponse(chunks())


def build_app(registry: CollectorRegistry, **options: object) -> Starlette:
    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/echo", echo, methods=["POST"]),
            Route("/boom", boom),
            Route("/stream", stream),
        ]
    )
    app.add_middleware(MetricsMiddleware, registry=registry, **options)  # type: ignore[arg-type]
    return app


def client_for(app: object, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_the_five_metrics_with_route_templates(registry: CollectorRegistry) -> None:
    async with client_for(build_app(registry)) as client:
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 200
        assert (await client.get("/items/404")).status_code == 404
        assert (await client.post("/echo", content=b"hello")).status_code == 201
    assert value(registry, REQUESTS, method="GET", status="200", handler="/items/{item_id}") == 2
    assert value(registry, REQUESTS, method="GET", status="404", handler="/items/{item_id}") == 1
    assert value(registry, REQUESTS, method="POST", status="201", handler="/echo") == 1
    assert (
        value(
            registry,
            "http_request_duration_seconds_count",
            method="GET",
            handler="/items/{item_id}",
        )
        == 3
    )
    assert value(registry, "http_request_size_bytes_sum", handler="/echo") == 5
    assert value(registry, "http_response_size_bytes_sum", handler="/echo") == 5
    assert value(
        registry, "http_response_size_bytes_sum", handler="/items/{item_id}"
    ) == 10 + 10 + len("no such item")
    assert (
        value(registry, "http_requests_in_progress", method="GET", handler="/items/{item_id}") == 0
    )
    assert "/items/1" not in label_values(registry, REQUESTS, "handler")
    text = generate_latest(registry).decode()
    for family in (
        "# TYPE http_requests_total counter",
        "# TYPE http_request_duration_seconds histogram",
        "# TYPE http_request_size_bytes histogram",
        "# TYPE http_response_size_bytes histogram",
        "# TYPE http_requests_in_progress gauge",
    ):
        assert family in text


async def test_router_404_and_405_share_one_label(registry: CollectorRegistry) -> None:
    async with client_for(build_app(registry)) as client:
        for n in range(20):
            assert (await client.get(f"/random/{n}")).status_code == 404
        assert (await client.get("/echo")).status_code == 405
    assert label_values(registry, REQUESTS, "handler") == {UNMATCHED_LABEL}
    assert value(registry, REQUESTS, method="GET", status="404", handler=UNMATCHED_LABEL) == 20
    assert value(registry, REQUESTS, method="GET", status="405", handler=UNMATCHED_LABEL) == 1


async def test_app_exception_counts_as_500_and_is_reraised(registry: CollectorRegistry) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("app bug")

    app = MetricsMiddleware(failing, registry=registry)
    async with client_for(app) as client:
        with pytest.raises(RuntimeError, match="app bug"):
            await client.get("/anything")
    assert value(registry, REQUESTS, method="GET", status="500", handler=UNMATCHED_LABEL) == 1
    assert value(registry, "http_requests_in_progress", method="GET", handler=UNMATCHED_LABEL) == 0


async def test_exception_inside_starlette_is_counted_with_the_sent_500(
    registry: CollectorRegistry,
) -> None:
    async with client_for(build_app(registry), raise_app_exceptions=False) as client:
        assert (await client.get("/boom")).status_code == 500
    assert value(registry, REQUESTS, method="GET", status="500", handler="/boom") == 1


async def test_exception_after_response_started_keeps_the_sent_status(
    registry: CollectorRegistry,
) -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ConnectionResetError("client went away")

    app = MetricsMiddleware(half, registry=registry)
    with pytest.raises(ConnectionResetError):
        await app(_scope("/x"), _receive_nothing, _discard)
    assert value(registry, REQUESTS, method="GET", status="200", handler=UNMATCHED_LABEL) == 1
    assert value(registry, "http_response_size_bytes_sum", handler=UNMATCHED_LABEL) == 4


async def test_streaming_and_chunked_bodies_count_every_byte(registry: CollectorRegistry) -> None:
    async def chunked_upload(scope: Scope, receive: Receive, send: Send) -> None:
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with client_for(build_app(registry)) as client:
        assert len((await client.get("/stream")).content) == 5000
    assert value(registry, "http_response_size_bytes_sum", handler="/stream") == 5000

    upload = CollectorRegistry()
    app = MetricsMiddleware(chunked_upload, registry=upload)

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 2500

    async with client_for(app) as client:
        response = await client.post("/upload", content=parts())
    assert response.text == "10000"
    assert value(upload, "http_request_size_bytes_sum", handler=UNMATCHED_LABEL) == 10000


async def test_duration_ends_at_the_last_body_byte_not_after_background_tasks(
    registry: CollectorRegistry,
) -> None:
    release = asyncio.Event()
    finished = asyncio.Event()

    async def background() -> None:
        await release.wait()
        finished.set()

    async def with_task(request: Request) -> PlainTextResponse:
        return PlainTextResponse("done", background=BackgroundTask(background))

    app = Starlette(routes=[Route("/task", with_task)])
    middleware = MetricsMiddleware(app, registry=registry)
    sent_done = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            sent_done.set()

    call = asyncio.create_task(middleware(_scope("/task"), _receive_nothing, send))
    await sent_done.wait()
    # The background task is still blocked here; hold it for a measurable while.
    await asyncio.sleep(0.3)
    assert not call.done()
    release.set()
    await call
    assert finished.is_set()
    assert (
        value(registry, "http_request_duration_seconds_count", method="GET", handler="/task") == 1
    )
    assert (
        value(registry, "http_request_duration_seconds_sum", method="GET", handler="/task") < 0.25
    )


async def test_in_progress_counts_requests_being_served(registry: CollectorRegistry) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        entered.set()
        await gate.wait()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/slow/{n}", slow)])
    app.add_middleware(MetricsMiddleware, registry=registry)
    async with client_for(app) as client:
        pending = [asyncio.create_task(client.get(f"/slow/{n}")) for n in range(3)]
        await entered.wait()
        for _ in range(50):  # let all three reach the endpoint
            await asyncio.sleep(0)
        assert value(registry, "http_requests_in_progress", method="GET", handler="/slow/{n}") == 3
        gate.set()
        await asyncio.gather(*pending)
    # The idle series stays, at 0, instead of vanishing from dashboards.
    idle = registry.get_sample_value(
        "http_requests_in_progress", {"method": "GET", "handler": "/slow/{n}"}
    )
    assert idle == 0.0


async def test_in_progress_returns_to_zero_on_client_disconnect(
    registry: CollectorRegistry,
) -> None:
    async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        raise asyncio.CancelledError

    app = MetricsMiddleware(waits_for_disconnect, registry=registry)
    messages: list[Message] = [
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    with pytest.raises(asyncio.CancelledError):
        await app(_scope("/gone"), receive, _discard)
    assert value(registry, "http_requests_in_progress", method="GET", handler=UNMATCHED_LABEL) == 0
    assert value(registry, REQUESTS, method="GET", status="500", handler=UNMATCHED_LABEL) == 1


async def test_lifespan_passes_through_untouched(registry: CollectorRegistry) -> None:
    """Websocket connections are measured: see tests/metrics/test_websocket.py."""
    seen: list[tuple[str, object, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["type"], receive, send))

    middleware = MetricsMiddleware(app, registry=registry)
    await middleware({"type": "lifespan", "path": "/ws"}, _receive_nothing, _discard)
    assert seen == [("lifespan", _receive_nothing, _discard)]
    assert value(registry, REQUESTS, method="GET", status="200", handler=UNMATCHED_LABEL) == 0


async def test_exemplars_carry_the_sampled_trace_id(registry: CollectorRegistry) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    app = build_app(registry)
    async with client_for(app) as client:
        with tracer.start_as_current_span("request") as span:
            await client.get("/items/7")
        trace_id = format(span.get_span_context().trace_id, "032x")
    text = generate_openmetrics(registry).decode()
    assert f'trace_id="{trace_id}"' in text
    bucket_lines = [
        line
        for line in text.splitlines()
        if line.startswith("http_request_duration_seconds_bucket") and "#" in line
    ]
    assert bucket_lines, text


async def test_unsampled_spans_give_no_exemplar(registry: CollectorRegistry) -> None:
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    async with client_for(build_app(registry)) as client:
        with tracer.start_as_current_span("request"):
            await client.get("/items/7")
    assert "trace_id" not in generate_openmetrics(registry).decode()


async def test_options_namespace_buckets_and_excluded_paths(registry: CollectorRegistry) -> None:
    app = build_app(registry, namespace="shop", buckets=(0.5, 1.0), exclude_paths={"/items/skip"})
    async with client_for(app) as client:
        await client.get("/items/1")
        await client.get("/items/skip")
    assert (
        value(
            registry,
            "shop_http_requests_total",
            method="GET",
            status="200",
            handler="/items/{item_id}",
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "status": "200", "handler": "/items/{item_id}"}
        )
        is None
    )
    assert (
        value(
            registry,
            "shop_http_request_duration_seconds_bucket",
            method="GET",
            handler="/items/{item_id}",
            le="0.5",
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "shop_http_request_duration_seconds_bucket",
            {"method": "GET", "handler": "/items/{item_id}", "le": "0.25"},
        )
        is None
    )
    assert (
        value(registry, "shop_http_requests_in_progress", method="GET", handler="/items/{item_id}")
        == 0
    )


def test_rebuilding_or_sharing_a_registry_never_raises_duplicated_timeseries(
    registry: CollectorRegistry,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    first = MetricsMiddleware(app, registry=registry)
    second = MetricsMiddleware(app, registry=registry)
    assert first._metrics is second._metrics
    MetricsMiddleware(app, registry=CollectorRegistry())
    MetricsMiddleware(app, registry=registry, namespace="other")
    with pytest.raises(ValueError, match="other buckets"):
        MetricsMiddleware(app, registry=registry, buckets=(1.0, 2.0))


async def test_starlette_rebuilding_its_stack_reuses_the_families(
    registry: CollectorRegistry,
) -> None:
    app = build_app(registry)
    async with client_for(app) as client:
        await client.get("/items/1")
    app.middleware_stack = app.build_middleware_stack()  # what Starlette does on reconfiguration
    async with client_for(app) as client:
        await client.get("/items/1")
    assert value(registry, REQUESTS, method="GET", status="200", handler="/items/{item_id}") == 2


async def test_fifty_concurrent_requests_are_kept_apart(registry: CollectorRegistry) -> None:
    async with client_for(build_app(registry)) as client:
        responses = await asyncio.gather(
            *[client.post("/echo", content=b"x" * n) for n in range(1, 51)],
            *[client.get(f"/items/{n}") for n in range(50)],
        )
    assert all(r.status_code in (200, 201) for r in responses)
    assert value(registry, REQUESTS, method="POST", status="201", handler="/echo") == 50
    assert value(registry, "http_request_size_bytes_sum", handler="/echo") == sum(range(1, 51))
    assert value(registry, "http_response_size_bytes_sum", handler="/echo") == sum(range(1, 51))
    assert value(registry, REQUESTS, method="GET", status="200", handler="/items/{item_id}") == 50


# --- bad input --------------------------------------------------------------------------


def _scope(path: str, **overrides: object) -> Scope:
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }
    scope.update(overrides)
    return scope


async def _receive_nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # no client, no server
        {"raw_path": b"/\xff\xfe\x80"},  # invalid UTF-8
        {"headers": [(b"x-odd", b"\xff\xfe caf\xc3\xa9"), (b"\x80bad", b"v")]},
        {"method": "FOO"},
        {"method": None},
        {"route": object(), "router": object()},
        {"path_template": ["not", "a", "str"]},
    ],
)
async def test_bad_input_never_changes_the_response(
    registry: CollectorRegistry, overrides: dict[str, object]
) -> None:
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    await MetricsMiddleware(_ok, registry=registry)(
        _scope("/p", **overrides), _receive_nothing, record
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"ok"
    assert label_values(registry, REQUESTS, "method") <= {"GET", "OTHER"}


async def test_hundred_thousand_distinct_paths_keep_labels_bounded(
    registry: CollectorRegistry,
) -> None:
    async def explicit_route(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.route"] = scope["path"]  # a misbehaving app labelling raw paths
        await _ok(scope, receive, send)

    app = MetricsMiddleware(explicit_route, registry=registry, max_handlers=50)
    for n in range(100_000):
        await app(_scope(f"/u/{n}"), _receive_nothing, _discard)
    handlers = label_values(registry, REQUESTS, "handler")
    assert len(handlers) == 51
    assert OVERFLOW_LABEL in handlers
    assert (
        value(registry, REQUESTS, method="GET", status="200", handler=OVERFLOW_LABEL)
        == 100_000 - 50
    )


async def test_a_failing_metric_update_is_reported_and_never_reaches_the_request(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def exploding_resolver(scope: Scope) -> str | None:
        raise RuntimeError("resolver bug")

    app = MetricsMiddleware(_ok, registry=registry, route_resolver=exploding_resolver)
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    await app(_scope("/x"), _receive_nothing, record)
    assert sent[0]["status"] == 200
    assert value(registry, REQUESTS, method="GET", status="200", handler=UNMATCHED_LABEL) == 1


async def test_fastapi_and_litestar_apps_get_their_templates(registry: CollectorRegistry) -> None:
    from fastapi import APIRouter, FastAPI
    from litestar import Litestar, get
    from litestar.params import FromPath

    router = APIRouter(prefix="/tours")

    @router.get("/{tour_id}")
    async def tour(tour_id: int) -> dict[str, int]:
        return {"tour_id": tour_id}

    fast = FastAPI()
    fast.include_router(router, prefix="/api")

    @get("/villas/{villa_id:int}")
    async def villa(villa_id: FromPath[int]) -> dict[str, int]:
        return {"villa_id": villa_id}

    lite = Litestar(route_handlers=[villa])
    async with client_for(MetricsMiddleware(fast, registry=registry)) as client:
        assert (await client.get("/api/tours/3")).status_code == 200
    other = CollectorRegistry()
    async with client_for(MetricsMiddleware(lite, registry=other)) as client:  # type: ignore[arg-type]
        assert (await client.get("/villas/9")).status_code == 200
    assert (
        value(registry, REQUESTS, method="GET", status="200", handler="/api/tours/{tour_id}") == 1
    )
    assert value(other, REQUESTS, method="GET", status="200", handler="/villas/{villa_id}") == 1


async def test_multiprocess_in_progress_gauge_returns_to_zero_when_the_app_raises(
    registry: CollectorRegistry,
) -> None:
    during: list[float] = []

    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.route"] = "/half"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        during.append(value(registry, "http_requests_in_progress", method="GET", handler="/half"))
        raise ConnectionResetError("client went away")

    app = MetricsMiddleware(half, registry=registry, multiprocess=True)
    with pytest.raises(ConnectionResetError):
        await app(_scope("/half"), _receive_nothing, _discard)
    assert during == [1.0]
    assert (
        registry.get_sample_value(
            "http_requests_in_progress", {"method": "GET", "handler": "/half"}
        )
        == 0.0
    )
    assert value(registry, REQUESTS, method="GET", status="200", handler="/half") == 1


async def test_excluded_paths_are_matched_below_the_root_path(registry: CollectorRegistry) -> None:
    app = MetricsMiddleware(_ok, registry=registry, exclude_paths={"/health/live"})
    await app(_scope("/api/health/live", root_path="/api"), _receive_nothing, _discard)
    await app(_scope("/health/live"), _receive_nothing, _discard)
    await app(_scope("/api/orders", root_path="/api"), _receive_nothing, _discard)
    assert value(registry, REQUESTS, method="GET", status="200", handler=UNMATCHED_LABEL) == 1
