"""Small ASGI building blocks shared by the stack's own endpoints.

The metrics, legacy-metrics and health apps all answer GET/HEAD with a small, fully
rendered body, refuse other methods with 405, and complete the lifespan protocol when a
server runs them on their own. That behaviour lives here once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from asgi_observe.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "Rendered",
    "complete_lifespan",
    "header_value",
    "read_only_endpoint",
    "relative_path",
    "respond",
]

Rendered = tuple[int, bytes, str, Sequence[tuple[bytes, bytes]]]
"""What a read-only endpoint renders: status, body, content type, extra headers."""

_METHOD_NOT_ALLOWED: Rendered = (
    405,
    b"Method Not Allowed\n",
    "text/plain; charset=utf-8",
    ((b"allow", b"GET, HEAD"),),
)


def relative_path(scope: Scope) -> str:
    """The path below ``root_path``, under either convention servers follow.

    uvicorn, Starlette 1.x ``Mount`` and the ASGI spec keep the prefix in ``path`` as well
    as in ``root_path``; hypercorn ``--root-path`` behind a prefix-stripping proxy, and
    older dispatchers, leave only the part below it in ``path``. The prefix is removed
    only when ``path`` starts with it at a segment boundary (``/api`` never strips
    ``/apix``).
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def header_value(scope: Scope, name: bytes) -> str:
    """The first value of header `name` (lowercase bytes), decoded as latin-1; "" if absent."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: Sequence[tuple[bytes, bytes]] = (),
    *,
    head: bool = False,
) -> None:
    """Send a complete response in two messages; `head` keeps the length but no body."""
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("latin-1")),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def complete_lifespan(
    receive: Receive, send: Send, *, on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Answer lifespan events so the app can be served on its own (``uvicorn module:app``).

    `on_shutdown` (if given) runs before shutdown is reported complete.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def read_only_endpoint(render: Callable[[Scope], Awaitable[Rendered]]) -> ASGIApp:
    """An ASGI app answering GET/HEAD with what `render` builds; 405 for other methods.

    Websocket scopes are refused by returning without accepting; lifespan is completed.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await complete_lifespan(receive, send)
            return
        if kind != "http":
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await respond(send, *_METHOD_NOT_ALLOWED)
            return
        await respond(send, *await render(scope), head=method == "HEAD")

    return serve
