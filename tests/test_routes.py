"""Route templates from every framework shape, read after the router ran."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from litestar import Litestar, get
from litestar.params import FromPath
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route

from asgi_observe.routes import (
    OVERFLOW_LABEL,
    ROUTE_SCOPE_KEY,
    SUBROUTE_SCOPE_KEY,
    LabelCap,
    normalize_method,
    resolve_route,
)
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send


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
