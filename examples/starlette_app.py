"""A Starlette app, fully observed: ``uvicorn --factory examples.starlette_app:create_app``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp


async def homepage(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def booking(request: Request) -> JSONResponse:
    return JSONResponse({"booking_id": request.path_params["booking_id"]})


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", homepage),
            Mount("/api/{version}", routes=[Route("/bookings/{booking_id:int}", booking)]),
        ]
    )


def create_app(settings: Settings | None = None) -> ASGIApp:
    return instrument(build_app(), settings)
