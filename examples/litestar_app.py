"""A Litestar app, fully observed: ``uvicorn --factory examples.litestar_app:create_app``."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.params import FromPath

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp


@get("/")
async def root() -> dict[str, str]:
    return {"hello": "world"}


@get("/villas/{villa_id:int}")
async def villa(villa_id: FromPath[int]) -> dict[str, int]:
    return {"villa_id": villa_id}


def build_app() -> Litestar:
    return Litestar(route_handlers=[root, villa])


def create_app(settings: Settings | None = None) -> ASGIApp:
    return instrument(build_app(), settings)  # type: ignore[arg-type]
