"""Six frameworks through `instrument()`, held to the same promises.

Starlette, FastAPI, Litestar, Django (with `RouteTemplateMiddleware`), Quart (with
`track_routes`) and a hand-written ASGI app each serve the same three routes, built here
per test: ``GET /items/{item_id}`` (logs a line through `get_logger`), ``GET /boom``
(raises) and nothing else. For each: route templates in the metrics, the span name and
the access log; 404 and 405 labels; exceptions; request ids; trace-log correlation. The
Django and Quart examples are also served by a real ``uvicorn --factory``.
"""

from __future__ import annotations

import io
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.test import override_settings
from django.urls import path as django_path
from django.views.decorators.http import require_GET
from fastapi import FastAPI
from litestar import Litestar
from litestar import get as litestar_get
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from quart import Quart, websocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from asgi_observe import Settings, get_logger, instrument, record_exception
from asgi_observe.integrations.quart import track_routes
from asgi_observe.types import ASGIApp, Receive, Scope, Send
from examples.django_app import configure_django
from tests.e2e.servers import serve, server_env, uvicorn_argv
from tests.logs.support import json_logs, lines, restore_logging
from tests.support import free_port, http_get
from tests.websocket_support import FakeConnection, ws_scope

__all__ = ["json_logs", "restore_logging"]  # fixtures used by the tests below

FRAMEWORKS = ("starlette", "fastapi", "litestar", "django", "quart", "raw")
TEMPLATE = "/items/{item_id}"
DJANGO_MIDDLEWARE = "asgi_observe.integrations.django.RouteTemplateMiddleware"

# A method the route does not allow. Routers that match methods (Starlette, FastAPI,
# Litestar, Werkzeug) answer 405 before any endpoint runs: the unmatched label, like a
# 404. Django's resolver ignores methods; the matched view answers the 405, so the route
# keeps its template (as a Starlette endpoint's own 405 does). The raw app is a router of
# its own that names no route it did not serve.
WRONG_METHOD_LABEL = {
    "starlette": "none",
    "fastapi": "none",
    "litestar": "none",
    "django": TEMPLATE,
    "quart": "none",
    "raw": "none",
}
# Starlette, FastAPI and a raw app let the exception reach the server (after Starlette's
# ServerErrorMiddleware sent a 500); Litestar, Django and Quart answer 500 themselves, and
# hand the exception to the span through a hook (Litestar's after_exception, set up in
# the app below) or the integration (Django, Quart).
PROPAGATES = {"starlette", "fastapi", "raw"}

logger = get_logger("tests.frameworks")


def item_read(item_id: int) -> None:
    logger.info("item read", item_id=item_id)


def fail() -> None:
    msg = "the handler failed"
    raise RuntimeError(msg)


# --- the six apps ------------------------------------------------------------------------


def starlette_app() -> ASGIApp:
    async def item(request: Request) -> JSONResponse:
        item_read(request.path_params["item_id"])
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def boom(request: Request) -> JSONResponse:
        fail()
        return JSONResponse({})

    return Starlette(routes=[Route("/items/{item_id:int}", item), Route("/boom", boom)])


def fastapi_app() -> ASGIApp:
    app = FastAPI(telemetry={"tracing": False, "metrics": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        item_read(item_id)
        return {"item_id": item_id}

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        fail()
        return {}

    return app


def litestar_app() -> ASGIApp:
    @litestar_get("/items/{item_id:int}")
    async def item(item_id: FromPath[int]) -> dict[str, int]:
        item_read(item_id)
        return {"item_id": item_id}

    @litestar_get("/boom")
    async def boom() -> dict[str, str]:
        fail()
        return {}

    async def record_unhandled(exc: Exception, scope: Any) -> None:
        # Litestar answers 500 itself, so the tracing middleware never sees the exception;
        # its documented after_exception hook hands it over. HTTP exceptions (404, 405)
        # are answers, not failures.
        if not isinstance(exc, HTTPException):
            record_exception(exc)

    return Litestar(route_handlers=[item, boom], after_exception=[record_unhandled])  # type: ignore[return-value]


def django_urls() -> types.ModuleType:
    """A URLconf for this test's settings: a module object, as ROOT_URLCONF allows."""

    @require_GET
    def item(request: HttpRequest, item_id: int) -> JsonResponse:
        item_read(item_id)  # a sync view: Django runs it in a thread
        return JsonResponse({"item_id": item_id})

    async def boom(request: HttpRequest) -> JsonResponse:
        fail()
        return JsonResponse({})

    urls = types.ModuleType("tests_frameworks_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        django_path("items/<int:item_id>", item),
        django_path("boom", boom),
    ]
    return urls


def django_app() -> ASGIApp:
    """Django's handler, built under the `django_settings_for_tests` fixture."""
    # django-stubs type the scope as dict and messages as Mapping: narrower than ASGIApp's.
    return cast(ASGIApp, get_asgi_application())


def quart_app() -> ASGIApp:
    app = Quart(__name__)

    @app.get("/items/<int:item_id>")
    async def item(item_id: int) -> dict[str, int]:
        item_read(item_id)
        return {"item_id": item_id}

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        fail()
        return {}

    return track_routes(app)  # type: ignore[return-value]


def raw_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        parts = scope["path"].strip("/").split("/")
        status, body = 404, b'{"detail":"Not Found"}'
        if len(parts) == 2 and parts[0] == "items" and parts[1].isdigit():
            if scope["method"] == "GET":
                scope["asgi_observe.route"] = TEMPLATE
                item_read(int(parts[1]))
                status, body = 200, json.dumps({"item_id": int(parts[1])}).encode()
            else:
                status, body = 405, b'{"detail":"Method Not Allowed"}'
        elif parts == ["boom"]:
            scope["asgi_observe.route"] = "/boom"
            fail()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


BUILDERS = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "django": django_app,
    "quart": quart_app,
    "raw": raw_app,
}


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def django_settings_for_tests() -> Iterator[None]:
    """Django allows one settings object per process: configure it once (the example
    module may have done so already), and override what these tests need."""
    # The example's own settings, so the example works in this process whichever runs first.
    configure_django()
    with override_settings(
        ROOT_URLCONF=django_urls(),
        MIDDLEWARE=[DJANGO_MIDDLEWARE],
        ALLOWED_HOSTS=["testserver"],
        DEBUG=False,
        DEBUG_PROPAGATE_EXCEPTIONS=False,
    ):
        yield


@pytest.fixture
def observed(
    request: pytest.FixtureRequest,
    registry: CollectorRegistry,
    provider: TracerProvider,
    json_logs: io.StringIO,
) -> ASGIApp:
    """The framework's app (the test's parameter) inside the whole stack."""
    framework: str = request.param
    if framework == "django":
        request.getfixturevalue("django_settings_for_tests")
    return instrument(
        BUILDERS[framework](), Settings(), registry=registry, tracer_provider=provider
    )


def each_framework() -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        ("observed", "framework"), [(name, name) for name in FRAMEWORKS], indirect=["observed"]
    )


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    raise_app_exceptions: bool = True,
) -> httpx.Response:
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=headers)


def count(registry: CollectorRegistry, method: str, status: str, handler: str) -> float:
    labels = {"method": method, "status": status, "handler": handler}
    return registry.get_sample_value("http_requests_total", labels) or 0.0


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def access_line(stream: io.StringIO, path: str) -> dict[str, Any]:
    found = [
        line
        for line in lines(stream)
        if line.get("event") == "request" and line.get("path") == path
    ]
    assert len(found) == 1, found
    return found[0]


# --- the promises ------------------------------------------------------------------------


@each_framework()
async def test_route_template_names_the_label_the_span_and_the_access_log(
    observed: ASGIApp,
    framework: str,
    registry: CollectorRegistry,
    exporter: InMemorySpanExporter,
    json_logs: io.StringIO,
) -> None:
    response = await call(observed, "GET", "/items/7")

    assert response.status_code == 200
    assert response.json() == {"item_id": 7}
    assert count(registry, "GET", "200", TEMPLATE) == 1
    span = server_span(exporter)
    assert span.name == f"GET {TEMPLATE}"
    assert span.attributes is not None
    assert span.attributes["http.route"] == TEMPLATE
    line = access_line(json_logs, "/items/7")
    assert line["route"] == TEMPLATE
    assert line["status"] == 200


@each_framework()
async def test_unknown_path_is_unmatched_and_wrong_method_follows_the_router(
    observed: ASGIApp, framework: str, registry: CollectorRegistry, json_logs: io.StringIO
) -> None:
    missing = await call(observed, "GET", "/nowhere/3")
    wrong = await call(observed, "POST", "/items/7")

    assert missing.status_code == 404
    assert count(registry, "GET", "404", "none") == 1
    assert access_line(json_logs, "/nowhere/3")["level"] == "warning"
    assert wrong.status_code == 405
    assert count(registry, "POST", "405", WRONG_METHOD_LABEL[framework]) == 1
    # No raw path ever became a label.
    text = json.dumps([line.get("route") for line in lines(json_logs)])
    assert "/nowhere/3" not in text
    assert "/items/7" not in text


@each_framework()
async def test_raising_route_is_a_500_an_error_span_and_an_error_line(
    observed: ASGIApp,
    framework: str,
    registry: CollectorRegistry,
    exporter: InMemorySpanExporter,
    json_logs: io.StringIO,
) -> None:
    if framework in PROPAGATES:
        with pytest.raises(RuntimeError, match="the handler failed"):
            await call(observed, "GET", "/boom")
    else:
        response = await call(observed, "GET", "/boom")
        assert response.status_code == 500

    assert count(registry, "GET", "500", "/boom") == 1
    span = server_span(exporter)
    assert span.name == "GET /boom"
    assert span.status.status_code == StatusCode.ERROR
    events = [event for event in span.events if event.name == "exception"]
    assert len(events) == 1  # recorded once, whoever recorded it
    assert events[0].attributes is not None
    assert events[0].attributes["exception.type"] == "RuntimeError"
    line = access_line(json_logs, "/boom")
    assert line["level"] == "error"
    assert line["status"] == 500
    assert line["route"] == "/boom"


@each_framework()
async def test_request_id_is_echoed_or_generated_and_logged(
    observed: ASGIApp, framework: str, json_logs: io.StringIO
) -> None:
    given = await call(observed, "GET", "/items/7", headers={"X-Request-ID": "order-4711-abc"})
    generated = await call(observed, "GET", "/items/8")

    assert given.headers["x-request-id"] == "order-4711-abc"
    new_id = generated.headers["x-request-id"]
    assert new_id
    assert new_id != "order-4711-abc"
    assert access_line(json_logs, "/items/7")["request_id"] == "order-4711-abc"
    assert access_line(json_logs, "/items/8")["request_id"] == new_id
    handler_ids = [
        line["request_id"] for line in lines(json_logs) if line.get("event") == "item read"
    ]
    assert handler_ids == ["order-4711-abc", new_id]


@each_framework()
async def test_handler_log_line_carries_the_server_span_ids(
    observed: ASGIApp, framework: str, exporter: InMemorySpanExporter, json_logs: io.StringIO
) -> None:
    await call(observed, "GET", "/items/7")

    span = server_span(exporter)
    (line,) = [line for line in lines(json_logs) if line.get("event") == "item read"]
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")
    assert line["item_id"] == 7
    access = access_line(json_logs, "/items/7")
    assert (access["trace_id"], access["span_id"]) == (line["trace_id"], line["span_id"])


# --- integration details -----------------------------------------------------------------


async def test_quart_exception_reraised_by_quart_is_recorded_once(
    registry: CollectorRegistry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With ``PROPAGATE_EXCEPTIONS`` Quart re-raises; the tracing middleware records it,
    and the integration does not record it a second time."""
    app = quart_app()
    assert isinstance(app, Quart)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    observed = instrument(app, Settings(), registry=registry, tracer_provider=provider)  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="the handler failed"):
        await call(observed, "GET", "/boom")

    span = server_span(exporter)
    assert [event.name for event in span.events] == ["exception"]
    assert count(registry, "GET", "500", "/boom") == 1


async def test_quart_track_routes_twice_changes_nothing(
    registry: CollectorRegistry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = quart_app()
    assert isinstance(app, Quart)
    assert track_routes(app) is app
    observed = instrument(app, Settings(), registry=registry, tracer_provider=provider)  # type: ignore[arg-type]

    await call(observed, "GET", "/boom")

    assert len([e for e in server_span(exporter).events if e.name == "exception"]) == 1


async def test_quart_websocket_route_is_named(
    registry: CollectorRegistry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Quart(__name__)

    @app.websocket("/ws/<int:room>")
    async def room(room: int) -> None:
        await websocket.accept()
        await websocket.send(await websocket.receive())

    quart_asgi = cast(ASGIApp, track_routes(app))  # Quart types its scope as TypedDicts
    observed = instrument(quart_asgi, Settings(), registry=registry, tracer_provider=provider)
    connection = FakeConnection(["hello"])

    await connection.run(observed, ws_scope("/ws/7"))

    assert {"type": "websocket.send", "text": "hello"}.items() <= connection.sent[1].items()
    labels = {"handler": "/ws/{room}", "outcome": "accepted"}
    assert registry.get_sample_value("websocket_connections_total", labels) == 1
    assert server_span(exporter).name == "/ws/{room}"


async def test_django_http404_from_a_view_is_not_an_error(
    registry: CollectorRegistry,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    django_settings_for_tests: None,
) -> None:
    """``Http404`` raised by a matched view is Django's 404, not a failure: the route
    keeps its template and the span records no exception."""
    from django.http import Http404

    async def missing(request: HttpRequest, item_id: int) -> JsonResponse:
        raise Http404

    urls = types.ModuleType("tests_frameworks_urls_404")
    urls.urlpatterns = [django_path("items/<int:item_id>", missing)]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urls):
        observed = instrument(django_app(), Settings(), registry=registry, tracer_provider=provider)
        response = await call(observed, "GET", "/items/7")

    assert response.status_code == 404
    assert count(registry, "GET", "404", TEMPLATE) == 1
    span = server_span(exporter)
    assert span.events == ()
    assert span.status.status_code != StatusCode.ERROR


async def test_django_under_a_starlette_mount_gets_the_mount_prefix(
    registry: CollectorRegistry, provider: TracerProvider, django_settings_for_tests: None
) -> None:
    outer = Starlette(routes=[Mount("/legacy", app=django_app())])
    observed = instrument(outer, Settings(), registry=registry, tracer_provider=provider)

    response = await call(observed, "GET", "/legacy/items/7")

    assert response.status_code == 200
    assert count(registry, "GET", "200", "/legacy" + TEMPLATE) == 1


class SyncOnlyMiddleware:
    """A Django middleware without async support: Django runs the chain around it sync."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)


async def test_django_sync_middleware_chain_names_the_route_and_records_exceptions(
    registry: CollectorRegistry,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    django_settings_for_tests: None,
) -> None:
    """Behind a sync-only middleware `RouteTemplateMiddleware` runs in Django's sync mode
    (in a thread): the route is still named and a view's exception still recorded."""
    with override_settings(
        MIDDLEWARE=[DJANGO_MIDDLEWARE, f"{__name__}.{SyncOnlyMiddleware.__name__}"]
    ):
        observed = instrument(django_app(), Settings(), registry=registry, tracer_provider=provider)
        ok = await call(observed, "GET", "/items/7")
        exporter.clear()
        failed = await call(observed, "GET", "/boom")

    assert (ok.status_code, failed.status_code) == (200, 500)
    assert count(registry, "GET", "200", TEMPLATE) == 1
    assert count(registry, "GET", "500", "/boom") == 1
    assert [event.name for event in server_span(exporter).events] == ["exception"]


# --- the examples under a real uvicorn ---------------------------------------------------


@pytest.mark.parametrize("module", ["examples.django_app", "examples.quart_app"])
def test_example_factory_under_uvicorn(module: str, tmp_path: Path) -> None:
    port = free_port()
    argv = uvicorn_argv(f"{module}:create_app", port)
    with serve(
        argv, port=port, env=server_env(), log=tmp_path / "server.log", ready="/health/live"
    ) as server:
        status, headers, body = http_get(
            server.url + "/items/7", headers={"X-Request-ID": "from-the-wire-1"}
        )
        assert status == 200
        assert json.loads(body) == {"item_id": 7}
        assert headers["x-request-id"] == "from-the-wire-1"
        assert http_get(server.url + "/orders/a-1/lines/2")[0] == 200
        assert http_get(server.url + "/nowhere")[0] == 404
        assert http_get(server.url + "/boom")[0] == 500
        status, _, body = http_get(server.url + "/metrics")
    assert status == 200
    text = body.decode()
    for handler, code in [
        ("/items/{item_id}", "200"),
        ("/orders/{order_id}/lines/{line}", "200"),
        ("none", "404"),
        ("/boom", "500"),
    ]:
        assert f'http_requests_total{{handler="{handler}",method="GET",status="{code}"}} 1.0' in (
            text
        ), text
    assert "/items/7" not in text
