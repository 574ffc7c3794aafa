"""TracingMiddleware: names, kinds, attributes, propagation, errors, exclusions, bounds."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from opentelemetry import baggage, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.tracing import TracingMiddleware, add_span_attributes, tracer
from asgi_observe.tracing import api as tracing_api
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.tracing.otlp_receivers import http_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


seen: dict[str, trace.SpanContext] = {}


async def item(request: Request) -> PlainTextResponse:
    seen[request.path_params["item_id"]] = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span("load item"):
        add_span_attributes(owner="jane.doe@example.com")
    return PlainTextResponse("ok", status_code=int(request.query_params.get("status", "200")))


async def boom(request: Request) -> Response:
    raise RuntimeError("cannot charge jane.doe@example.com")


async def things(request: Request) -> PlainTextResponse:
    return PlainTextResponse("thing")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/only-post", things, methods=["POST"]),
            Route("/purge/{key}", things, methods=["PURGE"]),
            Mount("/sub", routes=[Route("/things/{tid}", things)]),
            Route("/health", things),
        ]
    )


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def only_server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = server_spans(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def test_one_server_span_named_after_the_route_template(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        response = await http.get("/items/42", headers={"user-agent": "probe/1.0"})
    assert response.status_code == 200
    span = only_server_span(exporter)
    assert span.name == "GET /items/{item_id}"
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/items/42"
    assert attributes["url.scheme"] == "http"
    assert attributes["http.route"] == "/items/{item_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "testserver"
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["user_agent.original"] == "probe/1.0"
    assert "url.query" not in attributes
    assert "error.type" not in attributes


async def test_no_per_message_child_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.get("/sub/things/7")
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["GET /sub/things/{tid}"]


@pytest.mark.parametrize(
    "case",
    [
        ("GET", "/nowhere/42", "GET", None),  # router 404: no route, no raw path in the name
        ("GET", "/only-post", "GET", None),  # router 405 shares the unmatched name
        ("POST", "/only-post", "POST /only-post", "/only-post"),
        ("PURGE", "/purge/k", "HTTP /purge/{key}", "/purge/{key}"),  # method outside RFC 9110
    ],
)
async def test_span_name_bounded_for_unmatched_and_unknown(
    provider: TracerProvider, exporter: InMemorySpanExporter, case: tuple[str, str, str, str | None]
) -> None:
    method, path, name, route = case
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.request(method, path)
    span = only_server_span(exporter)
    assert span.name == name
    attributes = dict(span.attributes or {})
    assert attributes.get("http.route") == route
    if method == "PURGE":
        assert attributes["http.request.method"] == "_OTHER"
        assert attributes["http.request.method_original"] == "PURGE"


async def test_parent_and_baggage_extracted_from_w3c_headers(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observed: dict[str, object] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        observed["baggage"] = baggage.get_baggage("tenant")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TracingMiddleware(app, tracer_provider=provider)
    async with client(mw) as http:
        await http.get(
            "/x",
            headers={
                "traceparent": TRACEPARENT,
                "tracestate": "vendor=1",
                "baggage": "tenant=acme",
            },
        )
    span = only_server_span(exporter)
    assert span.context is not None
    assert span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "1"
    assert observed["baggage"] == "acme"


@pytest.mark.parametrize(
    "traceparent", ["garbage", "00-" + "0" * 32 + "-" + PARENT_ID + "-01", "00-xyz-abc-01", ""]
)
async def test_malformed_traceparent_starts_a_new_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter, traceparent: str
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        response = await http.get("/items/1", headers={"traceparent": traceparent})
    assert response.status_code == 200
    span = only_server_span(exporter)
    assert span.parent is None
    assert span.context is not None
    assert format(span.context.trace_id, "032x") != TRACE_ID


async def test_app_exception_recorded_and_reraised(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    span = only_server_span(exporter)
    assert span.name == "GET /boom"
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "RuntimeError"
    assert attributes["http.response.status_code"] == 500
    [event] = [e for e in span.events if e.name == "exception"]
    event_attributes = dict(event.attributes or {})
    assert event_attributes["exception.type"] == "RuntimeError"
    assert event_attributes["exception.message"] == "cannot charge [REDACTED_EMAIL]"
    stacktrace = str(event_attributes["exception.stacktrace"])
    assert "RuntimeError" in stacktrace
    assert "jane.doe" not in stacktrace
    assert "jane.doe" not in (span.status.description or "")


async def test_raw_app_exception_is_the_same_object_reraised(provider: TracerProvider) -> None:
    class CustomError(Exception):
        pass

    error = CustomError("x")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    mw = TracingMiddleware(app, tracer_provider=provider)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    with pytest.raises(CustomError) as caught:
        await mw(scope, receive, send)
    assert caught.value is error
    assert trace.get_current_span() is trace.INVALID_SPAN  # context restored


async def test_5xx_without_exception_is_an_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.get("/items/1?status=503")
        await http.get("/items/2?status=404")
    by_path = {str(dict(s.attributes or {})["url.path"]): s for s in server_spans(exporter)}
    error, not_found = by_path["/items/1"], by_path["/items/2"]
    assert error.status.status_code is StatusCode.ERROR
    assert dict(error.attributes or {})["error.type"] == "503"
    assert not [e for e in error.events if e.name == "exception"]
    # 4xx is the client's fault: a server span stays UNSET (semantic conventions).
    assert not_found.status.status_code is StatusCode.UNSET
    assert "error.type" not in dict(not_found.attributes or {})


async def test_pii_redacted_from_query_path_and_user_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.get(
            "/items/bob@example.com",
            params={"email": "bob@example.com", "token": "s3cr3tvalue", "page": "2"},
            headers={"user-agent": "bot (contact: ops@example.com)"},
        )
    server = only_server_span(exporter)
    attributes = dict(server.attributes or {})
    assert attributes["url.path"] == "/items/[REDACTED_EMAIL]"
    query = str(attributes["url.query"])
    # httpx sent email=bob%40example.com: the encoded form is seen through too.
    assert "bob" not in query
    assert "[REDACTED_EMAIL]" in query
    assert "s3cr3tvalue" not in query
    assert "page=2" in query
    assert attributes["user_agent.original"] == "bot (contact: [REDACTED_EMAIL])"
    [child] = [s for s in exporter.get_finished_spans() if s.name == "load item"]
    assert dict(child.attributes or {})["owner"] == "[REDACTED_EMAIL]"


async def test_query_with_plain_email_is_redacted(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TracingMiddleware(app, tracer_provider=provider)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/search",
        "headers": [],
        "query_string": b"q=bob@example.com&n=1",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    await mw(scope, receive, send)
    span = only_server_span(exporter)
    assert dict(span.attributes or {})["url.query"] == "q=[REDACTED_EMAIL]&n=1"


DANGEROUS_QUERY = (
    "code=4/0AX4XfWj&sig=abcdef&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=vjby"
    "&X-Goog-Signature=ab12&X-Amz-Credential=cred&key=k1&access_token=t0k"
    "&email=bob%40example.com&pwd=hunter2&page=2"
)


class _Lines:
    """Keeps the access log's ``path`` fields, as a structlog-style logger."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def info(self, event: str, **fields: object) -> None:
        self.paths.append(str(fields["path"]))

    warning = error = info


async def test_span_query_and_access_log_path_are_redacted_alike(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    logged = _Lines()
    app = TracingMiddleware(
        AccessLogMiddleware(starlette_app(), logger=logged), tracer_provider=provider
    )
    async with client(app) as http:
        response = await http.get(f"/items/7?{DANGEROUS_QUERY}")
    assert response.status_code == 200
    query = str(dict(only_server_span(exporter).attributes or {})["url.query"])
    assert query == (
        "code=[REDACTED]&sig=[REDACTED]&AWSAccessKeyId=[REDACTED]&Signature=[REDACTED]"
        "&X-Goog-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&key=[REDACTED]"
        "&access_token=[REDACTED]&email=[REDACTED_EMAIL]&pwd=[REDACTED]&page=2"
    )
    assert logged.paths == [f"/items/7?{query}"]


async def test_request_id_from_scope_becomes_an_attribute(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = TracingMiddleware(starlette_app(), tracer_provider=provider)

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.request_id"] = "0f8fad5b-d9cb-469f-a165-70867728950e"
        await inner(scope, receive, send)

    async with client(with_request_id) as http:
        await http.get("/items/1")
    span = only_server_span(exporter)
    assert dict(span.attributes or {})["request_id"] == "0f8fad5b-d9cb-469f-a165-70867728950e"


async def test_request_id_scope_key_is_configurable(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = TracingMiddleware(starlette_app(), tracer_provider=provider, request_id_scope_key="rid")

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        scope["rid"] = "abc-123"
        await inner(scope, receive, send)

    async with client(with_request_id) as http:
        await http.get("/items/1")
    assert dict(only_server_span(exporter).attributes or {})["request_id"] == "abc-123"


@pytest.mark.parametrize(
    ("excluded", "path", "traced"),
    [
        (("/metrics", "/health"), "/health", False),
        (("/metrics", "/health"), "/items/1", True),
        ("/metrics,/health", "/health", False),  # the environment variable's form
        (("client/.*/info",), "/client/7/info", False),
        # opentelemetry-util-http's semantics: searched in the full URL.
        (("/items/9$",), "/items/9", False),
        (("/items/9$",), "/items/90", True),
        (("^/items/9$",), "/items/9", True),  # the URL starts with the scheme
        (("/health",), "/healthcare/x", False),  # a user's pattern is a search
        ((r"https?://testserver/items/5",), "/items/5", False),  # full-URL pattern
        (None, "/health", True),
        ((), "/health", True),
    ],
)
async def test_excluded_urls_get_no_span(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    excluded: tuple[str, ...] | str | None,
    path: str,
    traced: bool,
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider, excluded_urls=excluded)
    async with client(app) as http:
        response = await http.get(path)
    assert response.status_code in (200, 404)
    assert bool(server_spans(exporter)) is traced


@pytest.mark.parametrize(
    ("path", "root_path", "traced"),
    [
        ("/health", "", False),
        ("/health/live", "", False),
        ("/healthcare", "", True),  # exact paths: a prefix does not exclude
        ("/reports/metrics/today", "", True),
        ("/metrics/extra", "", True),
        ("/api/health", "/api", False),  # below root_path, uvicorn's convention
    ],
)
async def test_excluded_paths_are_exact_and_below_root_path(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    path: str,
    root_path: str,
    traced: bool,
) -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = TracingMiddleware(
        ok,
        tracer_provider=provider,
        excluded_paths=("/metrics", "/health", "/health/live"),
    )
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get(path)).status_code == 200
    assert bool(server_spans(exporter)) is traced


async def test_headers_are_captured_sanitized_and_redacted(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = TracingMiddleware(
        starlette_app(),
        tracer_provider=provider,
        http_capture_headers_server_request=["x-tenant", "x-contact", "x-api-.*"],
        http_capture_headers_server_response=["content-type", "x-missing"],
        http_capture_headers_sanitize_fields=["x-api-key"],
    )
    async with client(app) as http:
        await http.get(
            "/items/1",
            headers={
                "X-Tenant": "acme",
                "X-Contact": "alice@example.com",
                "X-Api-Key": "k-123",
                "X-Api-Version": "2",
                "X-Other": "not captured",
            },
        )
    attributes = dict(only_server_span(exporter).attributes or {})
    assert attributes["http.request.header.x_tenant"] == ("acme",)
    assert attributes["http.request.header.x_contact"] == ("[REDACTED_EMAIL]",)
    assert attributes["http.request.header.x_api_key"] == ("[REDACTED]",)
    assert attributes["http.request.header.x_api_version"] == ("2",)
    assert "http.request.header.x_other" not in attributes
    assert attributes["http.response.header.content_type"] == ("text/plain; charset=utf-8",)
    assert not any(key.startswith("http.response.header.x_missing") for key in attributes)


async def test_hooks_see_span_scope_and_messages_and_cannot_break_requests(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    fresh_reports: None,
) -> None:
    seen: list[str] = []

    def server_request_hook(span: trace.Span, scope: Scope) -> None:
        span.set_attribute("tenant", "acme")
        seen.append(f"server:{scope['path']}")

    def client_request_hook(span: trace.Span, scope: Scope, message: Message) -> None:
        seen.append(f"receive:{message['type']}")

    def client_response_hook(span: trace.Span, scope: Scope, message: Message) -> None:
        seen.append(f"send:{message['type']}")
        raise RuntimeError("a broken hook")

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = TracingMiddleware(
        echo,
        tracer_provider=provider,
        server_request_hook=server_request_hook,
        client_request_hook=client_request_hook,
        client_response_hook=client_response_hook,
    )
    async with client(app) as http:
        response = await http.post("/x", content=b"body")
    assert response.status_code == 200
    assert response.text == "ok"
    assert seen == [
        "server:/x",
        "receive:http.request",
        "send:http.response.start",
        "send:http.response.body",
    ]
    assert dict(only_server_span(exporter).attributes or {})["tenant"] == "acme"
    assert "client_response_hook raised" in caplog.text


def test_invalid_capture_pattern_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="http_capture_headers_server_request"):
        TracingMiddleware(starlette_app(), http_capture_headers_server_request=["(x"])


def test_invalid_excluded_pattern_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="excluded_urls"):
        TracingMiddleware(starlette_app(), excluded_urls=["(unclosed"])


async def test_lifespan_passes_through_untouched(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Websocket connections get a span: see tests/tracing/test_websocket.py."""
    received: list[tuple[str, bool]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append((scope["type"], trace.get_current_span().is_recording()))
        message = await receive()
        await send({"type": f"{message['type']}.complete"})

    mw = TracingMiddleware(app, tracer_provider=provider)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    await mw({"type": "lifespan", "path": "/", "headers": []}, receive, send)
    assert received == [("lifespan", False)]
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert exporter.get_finished_spans() == ()


async def test_traceresponse_header_is_opt_in(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plain = TracingMiddleware(starlette_app(), tracer_provider=provider)
    opted = TracingMiddleware(starlette_app(), tracer_provider=provider, traceresponse=True)
    async with client(plain) as http:
        assert "traceresponse" not in (await http.get("/items/1")).headers
    async with client(opted) as http:
        response = await http.get("/items/2", headers={"traceparent": TRACEPARENT})
    span = [s for s in server_spans(exporter) if dict(s.attributes or {})["url.path"] == "/items/2"]
    assert span[0].context is not None
    span_id = format(span[0].context.span_id, "016x")
    assert response.headers["traceresponse"] == f"00-{TRACE_ID}-{span_id}-01"


async def test_unsampled_requests_record_nothing_but_keep_trace_ids(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = TracingMiddleware(starlette_app(), tracer_provider=provider, traceresponse=True)
    seen.clear()
    async with client(app) as http:
        response = await http.get("/items/u1")
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    # The ids still exist (logs carry them) and the response says "not sampled".
    context = seen["u1"]
    assert context.is_valid
    assert not context.trace_flags.sampled
    flags = int(response.headers["traceresponse"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # the sampled bit
    provider.shutdown()


async def test_current_span_inside_the_request_is_the_exported_one(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Trace-log correlation: what a log processor reads in a handler is the span exported."""
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    seen.clear()
    async with client(app) as http:
        await http.get("/items/c1")
    span = only_server_span(exporter)
    assert span.context is not None
    assert seen["c1"].trace_id == span.context.trace_id
    assert seen["c1"].span_id == span.context.span_id
    assert len(format(span.context.trace_id, "032x")) == 32
    # The manual child span, made through the module-level `tracer`, went to the same
    # (private) provider, under the server span.
    [child] = [s for s in exporter.get_finished_spans() if s.name == "load item"]
    assert child.parent is not None
    assert child.parent.span_id == span.context.span_id


async def test_50_concurrent_requests_are_kept_apart(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inside = 0
    all_inside = asyncio.Event()
    observed: dict[str, int] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal inside
        inside += 1
        if inside == 50:
            all_inside.set()
        await all_inside.wait()  # every request is in flight at once
        observed[scope["path"]] = trace.get_current_span().get_span_context().span_id
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    inner = TracingMiddleware(app, tracer_provider=provider)

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.request_id"] = scope["path"].rsplit("/", 1)[1]
        await inner(scope, receive, send)

    async with client(with_request_id) as http:
        responses = await asyncio.gather(*(http.get(f"/r/{i}") for i in range(50)))
    assert [r.text for r in responses] == [f"/r/{i}" for i in range(50)]
    spans = server_spans(exporter)
    assert len(spans) == 50
    for span in spans:
        attributes = dict(span.attributes or {})
        path = str(attributes["url.path"])
        assert attributes["request_id"] == path.rsplit("/", 1)[1]
        assert span.context is not None
        assert observed[path] == span.context.span_id
    assert len({s.context.trace_id for s in spans if s.context}) == 50
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_our_own_failure_never_breaks_the_request(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing_api, "_reported", set())  # "once per process" starts here

    class BrokenPropagator:
        fields = frozenset({"traceparent"})

        def extract(self, *args: object, **kwargs: object) -> object:
            raise RuntimeError("propagator bug")

    app = TracingMiddleware(
        starlette_app(),
        tracer_provider=provider,
        propagator=BrokenPropagator(),  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        async with client(app) as http:
            responses = [
                await http.get("/items/1", headers={"traceparent": TRACEPARENT}) for _ in range(3)
            ]
    assert [r.status_code for r in responses] == [200, 200, 200]
    reports = [r for r in caplog.records if r.name == "asgi_observe"]
    assert len(reports) == 1  # reported once, not per request
    assert "not traced" in reports[0].getMessage()
    assert server_spans(exporter) == []


async def test_global_provider_used_lazily_when_none_given() -> None:
    """Without a provider the API's proxy is used: with no global SDK, nothing breaks."""
    app = TracingMiddleware(starlette_app())
    async with client(app) as http:
        response = await http.get("/items/g1")
    assert response.status_code == 200


async def test_fastapi_native_tracing_is_reported_with_its_public_switch(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    fresh_reports: None,
) -> None:
    """FastAPI >= 0.142 traces natively: the duplicate is named, with the fix."""
    from fastapi import FastAPI

    api = FastAPI(telemetry={"tracer_provider": provider})

    @api.get("/tours/{tour_id}")
    async def tour(tour_id: int) -> dict[str, int]:
        return {"tour_id": tour_id}

    async with client(TracingMiddleware(api, tracer_provider=provider)) as http:
        for _ in range(3):
            assert (await http.get("/tours/4")).status_code == 200
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 6  # ours and FastAPI's for each request
    warnings = [r for r in caplog.records if "its own SERVER span" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not per request
    assert "telemetry={'tracing': False" in warnings[0].getMessage()


async def test_fastapi_with_native_tracing_off_has_one_trace(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    fresh_reports: None,
) -> None:
    from fastapi import FastAPI

    api = FastAPI(telemetry={"tracer_provider": provider, "tracing": False, "metrics": False})
    seen: list[str] = []

    @api.get("/tours/{tour_id}")
    async def tour(tour_id: int) -> dict[str, int]:
        seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        return {"tour_id": tour_id}

    async with client(TracingMiddleware(api, tracer_provider=provider)) as http:
        assert (await http.get("/tours/4")).status_code == 200
    span = only_server_span(exporter)
    assert span.name == "GET /tours/{tour_id}"
    assert seen == [format(span.context.trace_id, "032x")]
    assert not [r for r in caplog.records if "its own SERVER span" in r.getMessage()]


@pytest.fixture
def fresh_reports(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Start the once-per-process warnings afresh for this test."""
    monkeypatch.setattr(tracing_api, "_reported", set())
    caplog.set_level("WARNING", logger="asgi_observe")


# --- untrusted Host header ------------------------------------------------------------

BAD_PORT_HOSTS = [
    ("example.com:99999", "example.com"),
    ("example.com:-1", "example.com"),
    ("example.com:0", "example.com"),
    ("example.com:\u0661\u0662\u0663", "example.com"),  # Arabic-Indic digits: isdigit() is True
    ("example.com:12a", "example.com"),
    ("example.com:\u00b2", "example.com"),  # a latin-1 superscript: isdigit(), but int() raises
    ("example.com:", "example.com"),
    ("example.com:99999999999999999999999", "example.com"),  # past int64: OTLP cannot encode it
    ("[::1]:99999", "::1"),
    ("[::1]:\u0661", "::1"),
]


def wire(host: str) -> bytes:
    """The header bytes: latin-1 where it can encode them (as servers decode), else UTF-8."""
    try:
        return host.encode("latin-1")
    except UnicodeEncodeError:
        return host.encode("utf-8")


@pytest.mark.parametrize(("host", "address"), BAD_PORT_HOSTS)
async def test_host_with_an_invalid_port_keeps_the_address_and_drops_the_port(
    provider: TracerProvider, exporter: InMemorySpanExporter, host: str, address: str
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        response = await http.get("/items/7", headers={b"host": wire(host)})
    assert response.status_code == 200
    attributes = dict(only_server_span(exporter).attributes or {})
    assert attributes["server.address"] == address
    assert "server.port" not in attributes
    # The span keeps everything else.
    assert attributes["http.route"] == "/items/{item_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/items/7"


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        ("[::1]:8080", "::1", 8080),
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("example.com:65535", "example.com", 65535),
        ("example.com:1", "example.com", 1),
    ],
)
async def test_valid_hosts_give_address_and_port(
    provider: TracerProvider, exporter: InMemorySpanExporter, host: str, address: str, port: int
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.get("/items/7", headers={"host": host})
    attributes = dict(only_server_span(exporter).attributes or {})
    assert attributes["server.address"] == address
    assert attributes["server.port"] == port


@pytest.mark.parametrize("host", ["[::1]", "::1"])
async def test_ipv6_host_without_port(
    provider: TracerProvider, exporter: InMemorySpanExporter, host: str
) -> None:
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    async with client(app) as http:
        await http.get("/items/7", headers={"host": host})
    attributes = dict(only_server_span(exporter).attributes or {})
    assert attributes["server.address"] == "::1"
    assert "server.port" not in attributes


@pytest.mark.realparts
async def test_spans_with_untrusted_host_ports_are_accepted_by_an_otlp_exporter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over the real wire: every span arrives, with its attributes, and no export fails."""
    with http_receiver() as receiver:
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
        )
        try:
            app = TracingMiddleware(starlette_app(), tracer_provider=provider)
            hosts = [host for host, _ in BAD_PORT_HOSTS] + ["[::1]:8080"]
            with caplog.at_level(logging.WARNING):
                async with client(app) as http:
                    for host in hosts:
                        await http.get("/items/7", headers={b"host": wire(host)})
                provider.force_flush()
                # Each request also has the app's own "load item" span.
                received = receiver.wait_for(2 * len(hosts))
        finally:
            provider.shutdown()
    spans = [span for span in received if span.kind == 2]  # SPAN_KIND_SERVER
    assert len(spans) == len(hosts)
    assert not [r for r in caplog.records if "export" in r.getMessage().lower()]
    by_address = [
        (span.attributes["server.address"], span.attributes.get("server.port")) for span in spans
    ]
    assert by_address == [(address, None) for _, address in BAD_PORT_HOSTS] + [("::1", 8080)]
    for span in spans:
        assert span.attributes["http.route"] == "/items/{item_id}"
        assert span.attributes["http.response.status_code"] == 200


async def test_client_address_of_each_peer_when_seen_again(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # ``client.address`` is memoised by peer host when no proxy is trusted: repeated and
    # alternating peers, the normalised form and a malformed host must each give what
    # the rule of `asgi_observe.net` gives; X-Forwarded-For stays ignored.
    app = TracingMiddleware(starlette_app(), tracer_provider=provider)
    peers: list[object] = [
        ("203.0.113.5", 1),
        ("198.51.100.4", 2),
        ("203.0.113.5", 3),
        ["2001:DB8::0001", 4],
        ("2001:DB8::0001", 5),
        ("not an address", 6),
        None,
        ("198.51.100.4", 7),
    ]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    for number, peer in enumerate(peers):
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/items/{number}",
            "raw_path": f"/items/{number}".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"x-forwarded-for", b"6.6.6.6")],
            "client": peer,
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
    spans = sorted(
        server_spans(exporter), key=lambda span: str((span.attributes or {})["url.path"])
    )
    assert [(span.attributes or {}).get("client.address") for span in spans] == [
        "203.0.113.5",
        "198.51.100.4",
        "203.0.113.5",
        "2001:db8::1",
        "2001:db8::1",
        None,
        None,
        "198.51.100.4",
    ]
