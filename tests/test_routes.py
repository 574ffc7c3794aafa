"""Route templates from every framework shape, read after the router ran."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from litestar import Litestar, Router, asgi, get
from litestar.params import FromPath
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route

from asgi_observe import Settings, instrument
from asgi_observe.routes import (
    OVERFLOW_LABEL,
    PREFLIGHT_LABEL,
    ROUTE_SCOPE_KEY,
    SUBROUTE_SCOPE_KEY,
    UNMATCHED_LABEL,
    LabelCap,
    is_preflight,
    normalize_method,
    resolve_route,
    track_route,
    unmatched_label,
)
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.logs.support import json_logs, lines, restore_logging
from tests.metrics.helpers import value

__all__ = ["json_logs", "restore_logging"]  # fixtures used here


class RouteSpy:
    """Outermost wrapper recording what resolve_route gives once the app is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, capture)
        self.seen.append(resolve_route(scope, status=status))


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def raw_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"raw"})


async def templates_of(app: ASGIApp, requests: list[tuple[str, str]]) -> list[str | None]:
    spy = RouteSpy(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=spy), base_url="http://test"
    ) as client:
        for method, path in requests:
            await client.request(method, path)
    return spy.seen


async def test_starlette_routes_nested_mounts_and_path_parameters() -> None:
    things = [Route("/things/{tid}", ok)]
    app = Starlette(
        routes=[
            Route("/", ok),
            Route("/items/{item_id:int}", ok),
            Mount("/org/{org}", routes=[Mount("/sub", routes=things)]),
            Mount("/v1", routes=things),
            Mount("/v2", routes=things),
            Mount("/static", app=raw_endpoint),
            Host("api.example.com", app=Starlette(routes=[Route("/host-only", ok)])),
        ]
    )
    seen = await templates_of(
        app,
        [
            ("GET", "/"),
            ("GET", "/items/3"),
            ("GET", "/org/acme/sub/things/9"),
            ("GET", "/v1/things/1"),
            ("GET", "/v2/things/2"),
            ("GET", "/static/css/site.css"),
            ("GET", "/nowhere/7"),
            ("POST", "/items/3"),
        ],
    )
    assert seen == [
        "/",
        "/items/{item_id}",
        "/org/{org}/sub/things/{tid}",
        "/v1/things/{tid}",
        "/v2/things/{tid}",
        "/static/{path}",
        None,  # router 404
        None,  # router 405 shares the unmatched label
    ]


async def test_a_mounted_app_can_name_its_own_subroute() -> None:
    async def sub_app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[SUBROUTE_SCOPE_KEY] = "/live"
        await raw_endpoint(scope, receive, send)

    app = Starlette(routes=[Mount("/health", app=sub_app)])
    assert await templates_of(app, [("GET", "/health/live")]) == ["/health/live"]


async def test_fastapi_routers_with_prefixes_and_mounted_subapps() -> None:
    router = APIRouter(prefix="/destinations")
    nested = APIRouter(prefix="/guides")

    @router.get("/{slug}")
    async def destination(slug: str) -> dict[str, str]:
        return {"slug": slug}

    @nested.get("/{guide_id}")
    async def guide(guide_id: str) -> dict[str, str]:
        return {"guide_id": guide_id}

    router.include_router(nested, prefix="/{slug}")

    sub = FastAPI()

    @sub.get("/plans/{plan_id}")
    async def plan(plan_id: int) -> dict[str, int]:
        return {"plan_id": plan_id}

    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    app.mount("/itinerary/{region}", sub)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            from fastapi import HTTPException

            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id}

    seen = await templates_of(
        app,
        [
            ("GET", "/api/v1/destinations/ubud"),
            ("GET", "/api/v1/destinations/ubud/guides/g7"),
            ("GET", "/itinerary/bali/plans/4"),
            ("GET", "/items/0"),  # the endpoint's own 404 keeps its template
            ("GET", "/items/not-an-int"),  # validation 422 keeps it too
            ("GET", "/missing"),
        ],
    )
    assert seen == [
        "/api/v1/destinations/{slug}",
        "/api/v1/destinations/{slug}/guides/{guide_id}",
        "/itinerary/{region}/plans/{plan_id}",
        "/items/{item_id}",
        "/items/{item_id}",
        None,
    ]


async def test_litestar_path_template() -> None:
    @get("/beaches/{beach_id:int}")
    async def beach(beach_id: FromPath[int]) -> dict[str, int]:
        return {"beach_id": beach_id}

    app: ASGIApp = Litestar(route_handlers=[beach])  # type: ignore[assignment]
    assert await templates_of(app, [("GET", "/beaches/5"), ("GET", "/nope")]) == [
        "/beaches/{beach_id}",
        None,
    ]


async def test_explicit_scope_template_for_raw_apps() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_SCOPE_KEY] = "/reports/{year}"
        await raw_endpoint(scope, receive, send)

    assert await templates_of(app, [("GET", "/reports/2026")]) == ["/reports/{year}"]


def test_user_resolver_goes_first_and_cannot_break_resolution(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scope: Scope = {"type": "http", "path": "/x/1", ROUTE_SCOPE_KEY: "/x/{id}"}
    assert resolve_route(scope, lambda s: "/custom") == "/custom"
    assert resolve_route(dict(scope), lambda s: None) == "/x/{id}"

    def broken(scope: Scope) -> str | None:
        raise RuntimeError("resolver bug")

    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        assert resolve_route(dict(scope), broken) == "/x/{id}"


def test_unknown_route_shapes_degrade_to_unmatched() -> None:
    class Weird:
        pass

    assert resolve_route({"type": "http", "route": Weird(), "router": object()}) is None
    assert resolve_route({"type": "http", "path_template": 42}) is None
    assert resolve_route({"type": "http"}) is None


def test_label_cap_bounds_distinct_values(caplog: pytest.LogCaptureFixture) -> None:
    cap = LabelCap(3)
    assert [cap.bound(v) for v in ("/a", "/b", "/a", "/c")] == ["/a", "/b", "/a", "/c"]
    with caplog.at_level(logging.WARNING, logger="asgi_observe"):
        assert cap.bound("/d") == OVERFLOW_LABEL
        assert cap.bound("/e") == OVERFLOW_LABEL
    assert cap.bound("/b") == "/b"
    assert sum("distinct route templates" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="max_values"):
        LabelCap(0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("GET", "GET"),
        ("PATCH", "PATCH"),
        ("FOO", "OTHER"),
        ("get", "OTHER"),
        (None, "OTHER"),
        (b"GET", "OTHER"),
    ],
)
def test_methods_outside_the_standard_set_fold(method: object, expected: str) -> None:
    assert normalize_method(method) == expected


async def test_fastapi_plain_routes_and_mounts_are_found_by_endpoint() -> None:
    """FastAPI >= 0.16x sets scope["route"] only for APIRoutes; the rest have an endpoint."""
    from asgi_observe.health import HealthApp

    api = FastAPI()

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    api.add_route("/plain/{n}", plain)
    api.mount("/health", HealthApp({}, registry=CollectorRegistry()))
    api.mount("/files", raw_endpoint)
    seen = await templates_of(
        api,
        [
            ("GET", "/plain/7"),
            ("GET", "/health/ready"),
            ("GET", "/health/live"),
            ("GET", "/files/a/b.txt"),
            ("GET", "/docs"),
            ("GET", "/nowhere"),
        ],
    )
    assert seen == ["/plain/{n}", "/health/ready", "/health/live", "/files/{path}", "/docs", None]


async def test_a_fastapi_app_mounted_in_starlette_overrides_the_outer_mount() -> None:
    sub = FastAPI()

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    sub.add_route("/things/{tid}", plain)

    @sub.get("/api-things/{tid}")
    async def api_thing(tid: int) -> dict[str, int]:
        return {"tid": tid}

    app = Starlette(routes=[Mount("/v1", app=sub)])
    seen = await templates_of(app, [("GET", "/v1/things/3"), ("GET", "/v1/api-things/4")])
    assert seen == ["/v1/things/{tid}", "/v1/api-things/{tid}"]


async def test_a_sub_app_wrapped_in_middleware_keeps_its_mount_prefix() -> None:
    from starlette.middleware.cors import CORSMiddleware

    from asgi_observe import routes

    inner = Starlette(routes=[Route("/things/{tid}", ok)])
    app = Starlette(routes=[Mount("/sub/{org}", app=CORSMiddleware(inner, allow_origins=["*"]))])
    builds_before = len(routes._indexes)
    seen = await templates_of(app, [("GET", f"/sub/acme/things/{n}") for n in range(20)])
    assert seen == ["/sub/{org}/things/{tid}"] * 20
    index = routes._indexes[id(app.router)]
    assert index.size == len(app.router.routes)
    assert len(routes._indexes) <= builds_before + 1  # built once, not per request


async def test_nothing_matched_inside_a_mounted_router_is_unmatched() -> None:
    app = Starlette(routes=[Mount("/api", routes=[Route("/items/{i}", ok)])])
    assert await templates_of(app, [("GET", "/api/missing")]) == [None]


# --- through the whole stack: metrics, spans and access log share the resolution -------


@contextlib.contextmanager
def observed(app: Any, registry: CollectorRegistry) -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield instrument(app, Settings(), registry=registry, tracer_provider=provider), exporter
    finally:
        provider.shutdown()


def stack_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def server_span_routes(exporter: InMemorySpanExporter) -> list[tuple[str, object]]:
    return [
        (span.name, (span.attributes or {}).get("http.route"))
        for span in exporter.get_finished_spans()
        if span.kind is SpanKind.SERVER
    ]


async def litestar_files(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"file"})


@pytest.mark.parametrize("copy_scope", [None, True, False])
@pytest.mark.filterwarnings("ignore:.*'copy_scope' not set:DeprecationWarning")
async def test_litestar_mounted_asgi_app_gets_its_mount_path(
    registry: CollectorRegistry,
    json_logs: io.StringIO,
    copy_scope: bool | None,
) -> None:
    """`/static/{path}` in metrics, span and access log; no LitestarWarning (an error here)."""
    static = asgi("/static", is_mount=True, copy_scope=copy_scope)(litestar_files)
    docs = asgi(["/docs", "/manual"], is_mount=True, copy_scope=copy_scope)(litestar_files)
    app = Litestar([static, Router("/api", route_handlers=[docs])])
    with observed(app, registry) as (stack, exporter):
        async with stack_client(stack) as http:
            for path in ("/static/css/site.css", "/static", "/api/manual/a/b", "/api/docs/x"):
                assert (await http.get(path)).status_code == 200
    assert (
        value(registry, "http_requests_total", method="GET", status="200", handler="/static/{path}")
        == 2
    )
    assert (
        value(
            registry,
            "http_requests_total",
            method="GET",
            status="200",
            handler="/api/manual/{path}",
        )
        == 1
    )
    assert (
        value(
            registry, "http_requests_total", method="GET", status="200", handler="/api/docs/{path}"
        )
        == 1
    )
    assert value(registry, "http_requests_total", method="GET", status="200", handler="none") == 0
    assert server_span_routes(exporter) == [
        ("GET /static/{path}", "/static/{path}"),
        ("GET /static/{path}", "/static/{path}"),
        ("GET /api/manual/{path}", "/api/manual/{path}"),
        ("GET /api/docs/{path}", "/api/docs/{path}"),
    ]
    routes = [line["route"] for line in lines(json_logs) if line.get("event") == "request"]
    assert routes == ["/static/{path}", "/static/{path}", "/api/manual/{path}", "/api/docs/{path}"]


# --- CORS preflights answered before routing --------------------------------------------


def cors_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", ok, methods=["GET", "DELETE"]),
            Route("/files/{rest:path}", ok),
            Mount("/v1", routes=[Route("/users/{uid:int}", ok)]),
            Mount("/static", app=raw_endpoint),
        ],
        middleware=[
            Middleware(CORSMiddleware, allow_origins=["https://app.example"], allow_methods=["*"])
        ],
    )


def preflight(method: str = "DELETE") -> dict[str, str]:
    return {"origin": "https://app.example", "access-control-request-method": method}


async def test_cors_preflights_are_labelled_by_the_route_they_target(
    registry: CollectorRegistry,
) -> None:
    with observed(cors_app(), registry) as (stack, exporter):
        async with stack_client(stack) as http:
            answers = [
                await http.options(path, headers=preflight())
                for path in (
                    "/items/42",
                    "/files/a/b.txt",
                    "/v1/users/7",
                    "/static/x.css",
                    "/nowhere/1",
                )
            ]
            refused = await http.options(
                "/items/1", headers={**preflight(), "origin": "https://evil.example"}
            )
            not_found = await http.get("/nowhere")
            plain_options = await http.options("/nowhere/2")
    assert [answer.status_code for answer in answers] == [200] * 5  # answered by CORSMiddleware
    assert refused.status_code == 400
    assert not_found.status_code == 404
    assert plain_options.status_code == 404

    def count(handler: str, status: str = "200") -> float:
        return value(
            registry, "http_requests_total", method="OPTIONS", status=status, handler=handler
        )

    assert count("/items/{item_id}") == 1
    assert count("/items/{item_id}", "400") == 1
    assert count("/files/{rest}") == 1
    assert count("/v1/users/{uid}") == 1
    assert count("/static/{path}") == 1
    assert count("preflight") == 1  # matches no route: its own bounded label
    assert count("none") == 0
    # 404s keep `none`, a plain OPTIONS (not a preflight) included.
    assert value(registry, "http_requests_total", method="GET", status="404", handler="none") == 1
    assert count("none", "404") == 1
    assert server_span_routes(exporter)[:5] == [
        ("OPTIONS /items/{item_id}", "/items/{item_id}"),
        ("OPTIONS /files/{rest}", "/files/{rest}"),
        ("OPTIONS /v1/users/{uid}", "/v1/users/{uid}"),
        ("OPTIONS /static/{path}", "/static/{path}"),
        ("OPTIONS", None),
    ]


async def test_fastapi_cors_preflight_is_labelled_by_its_route(registry: CollectorRegistry) -> None:
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])

    @app.put("/items/{item_id}")
    async def update(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    with observed(app, registry) as (stack, _):
        async with stack_client(stack) as http:
            assert (await http.options("/items/3", headers=preflight("PUT"))).status_code == 200
            assert (await http.options("/other", headers=preflight("PUT"))).status_code == 200
    assert (
        value(
            registry,
            "http_requests_total",
            method="OPTIONS",
            status="200",
            handler="/items/{item_id}",
        )
        == 1
    )
    assert (
        value(registry, "http_requests_total", method="OPTIONS", status="200", handler="preflight")
        == 1
    )


def test_preflight_detection() -> None:
    headers = [(b"origin", b"https://a"), (b"Access-Control-Request-Method", b"GET")]
    assert is_preflight({"type": "http", "method": "OPTIONS", "headers": headers})
    assert not is_preflight({"type": "http", "method": "GET", "headers": headers})
    assert not is_preflight({"type": "http", "method": "OPTIONS", "headers": headers[:1]})
    assert (
        unmatched_label({"type": "http", "method": "OPTIONS", "headers": headers})
        == PREFLIGHT_LABEL
    )
    assert unmatched_label({"type": "http", "method": "GET", "headers": []}) == UNMATCHED_LABEL


def test_route_resolution_writes_nothing_into_the_scope() -> None:
    """Frameworks that compare scopes (Litestar) must see no new key appear mid-request."""
    scope: Scope = {"type": "http", "path": "/x", ROUTE_SCOPE_KEY: "/x"}
    before = dict(scope)
    assert resolve_route(scope) == "/x"
    assert scope == before
    track_route(scope)
    tracked = dict(scope)
    assert resolve_route(scope) == "/x"
    scope[ROUTE_SCOPE_KEY] = "/changed"
    assert resolve_route(scope) == "/x"  # one resolution per request, kept in its slot
    assert tracked.keys() == scope.keys()
