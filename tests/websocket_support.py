"""Hand-written websocket apps and a fake server side of the ASGI websocket protocol.

`FakeConnection` plays the server: the app's first ``receive()`` gets
``websocket.connect``, then the scripted client messages, then ``websocket.disconnect``
(or, given `release`, sets `waiting` and holds the connection open until `release`). Everything the app sends is
kept in order, so tests compare message lists with and without the middlewares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send


def ws_scope(
    path: str = "/ws/lobby",
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    scheme: str = "ws",
    client: tuple[str, int] = ("203.0.113.7", 50000),
) -> Scope:
    """A websocket scope as uvicorn builds it (denial-response extension announced)."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": scheme,
        "server": ("127.0.0.1", 8000),
        "client": client,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"chat.example.com:8443"), (b"user-agent", b"ws-test/1"), *headers],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }


class FakeConnection:
    """The server side of one websocket connection."""

    def __init__(
        self,
        incoming: Sequence[str | bytes] = (),
        *,
        disconnect_code: int = 1000,
        release: asyncio.Event | None = None,
    ) -> None:
        self._script: list[Message] = [{"type": "websocket.connect"}]
        for item in incoming:
            if isinstance(item, bytes):
                self._script.append({"type": "websocket.receive", "bytes": item})
            else:
                self._script.append({"type": "websocket.receive", "text": item})
        self._disconnect: Message = {"type": "websocket.disconnect", "code": disconnect_code}
        self._release = release
        self.waiting = asyncio.Event()  # set once every scripted message was handed out
        self.sent: list[Message] = []
        self.received: list[Message] = []  # what receive() handed out, in order

    async def receive(self) -> Message:
        if self._script:
            message = self._script.pop(0)
        else:
            if self._release is not None:
                self.waiting.set()
                await self._release.wait()
            message = self._disconnect
        self.received.append(message)
        return message

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, app: ASGIApp, scope: Scope | None = None) -> None:
        await app(ws_scope() if scope is None else scope, self.receive, self.send)


# --- apps ---------------------------------------------------------------------------------


class AppError(Exception):
    """What the failing apps raise."""


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, echo every message back (text and bytes), stop at the client's disconnect."""
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": None, "headers": [(b"x-app", b"1")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send(
            {"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")}
        )


async def close_after_one_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, answer one message twice, then close with 4000 (server-initiated close)."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message.get("text")})
    await send({"type": "websocket.send", "text": "bye"})
    await send({"type": "websocket.close", "code": 4000, "reason": "done"})


async def reject_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Close before accepting (the server answers the handshake with 403)."""
    await receive()
    await send({"type": "websocket.close", "code": 1008})


async def reject_default_code_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Close before accepting without a code (ASGI's default: 1000)."""
    await receive()
    await send({"type": "websocket.close"})


async def deny_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse with an HTTP response (the ASGI websocket denial-response extension)."""
    await receive()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"no token"})


async def raise_before_accept_app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise AppError("handshake check failed for alice@example.com")


async def raise_after_accept_app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    await send({"type": "websocket.send", "text": "partial"})
    raise AppError("handler bug")


def routed(app: ASGIApp, template: str) -> ASGIApp:
    """Name the route template the way any app may (``scope["asgi_observe.route"]``)."""

    async def with_route(scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi_observe.route"] = template
        await app(scope, receive, send)

    return with_route


def recording(app: ASGIApp, seen: list[Message]) -> ASGIApp:
    """Keep what the app receives, to compare with what the server handed out."""

    async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_recording() -> Message:
            message = await receive()
            seen.append(message)
            return message

        await app(scope, receive_recording, send)

    return recorded


def same_messages(a: Sequence[Message], b: Sequence[Message]) -> bool:
    """Equal lists whose messages are the very same objects (nothing copied or rebuilt)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def snapshot(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Deep-enough copies to compare message contents after the fact."""
    return [
        {k: list(v) if isinstance(v, list) else v for k, v in message.items()}
        for message in messages
    ]
