"""A Quart app, fully observed: ``uvicorn --factory examples.quart_app:create_app``.

The one line of set-up for route templates is ``track_routes(app)``: the handler label,
span name and access-log ``route`` of ``/items/7`` are then ``/items/{item_id}``, read from
Quart's URL rule ``/items/<int:item_id>``.
"""

from __future__ import annotations

from quart import Quart

from asgi_observe import HealthApp, Settings, get_logger, instrument
from asgi_observe.integrations.quart import track_routes
from asgi_observe.types import ASGIApp

logger = get_logger(__name__)


def build_app() -> Quart:
    app = Quart(__name__)

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/<int:item_id>")
    async def item(item_id: int) -> dict[str, int]:
        logger.info("item read", item_id=item_id)
        return {"item_id": item_id}

    @app.get("/orders/<order_id>/lines/<int:line>")
    async def order_line(order_id: str, line: int) -> dict[str, str | int]:
        return {"order_id": order_id, "line": line}

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        msg = "the view failed"
        raise RuntimeError(msg)

    return app


def create_app(settings: Settings | None = None) -> ASGIApp:
    app = track_routes(build_app())
    return instrument(app, settings, health=HealthApp(version="1.0.0"))  # type: ignore[arg-type]
