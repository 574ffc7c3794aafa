"""A hand-written ASGI app, fully observed: ``uvicorn --factory examples.raw_asgi:create_app``.

Without a router, the app names its own route templates by setting
``scope["asgi_observe.route"]``; anything it leaves unnamed is labelled ``none``.
"""

from __future__ import annotations

import json

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp, Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path.startswith("/orders/"):
        scope["asgi_observe.route"] = "/orders/{order_id}"
        body, status = json.dumps({"order_id": path.rsplit("/", 1)[-1]}).encode(), 200
    elif path == "/":
        scope["asgi_observe.route"] = "/"
        body, status = b'{"hello": "world"}', 200
    else:
        body, status = b'{"detail": "Not Found"}', 404
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> ASGIApp:
    return instrument(app, settings)
