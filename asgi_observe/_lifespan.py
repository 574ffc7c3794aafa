"""Run the stack's own start-up and shutdown work inside the ASGI lifespan protocol.

The tracing flush and the internal metrics listener must start and stop with the app,
whichever server runs it and whether or not the wrapped app supports lifespan itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Hook", "LifespanHooks"]

logger = logging.getLogger("asgi_observe")

Hook = Callable[[], Awaitable[None]]


class LifespanHooks:
    """Run `startup` hooks before the app's start-up and `shutdown` hooks after its shutdown.

    An app without lifespan support (it raises or returns on a lifespan scope without
    answering) gets the protocol completed on its behalf, as uvicorn's ``lifespan=auto``
    would, so the hooks still run. A hook that fails is reported and does not stop the app:
    observability must never take the service down.
    """

    def __init__(
        self, app: ASGIApp, *, startup: Sequence[Hook] = (), shutdown: Sequence[Hook] = ()
    ) -> None:
        self.app = app
        self._startup = tuple(startup)
        self._shutdown = tuple(shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "answered": False, "shutdown": False}

        async def receive_running_hooks() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not state["started"]:
                state["started"] = True
                await _run(self._startup, "start-up")
            return message

        async def send_running_hooks(message: Message) -> None:
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                state["answered"] = True
            elif kind.startswith("lifespan.shutdown.") and not state["shutdown"]:
                state["shutdown"] = True
                await _run(self._shutdown, "shutdown")
            await send(message)

        try:
            await self.app(scope, receive_running_hooks, send_running_hooks)
        except BaseException:
            if state["answered"]:
                raise
            logger.debug(
                "asgi_observe: the app does not support lifespan; completing it", exc_info=True
            )
        if state["answered"] and state["shutdown"]:
            return
        if state["answered"]:
            return  # the app answered start-up and returned; the server decides what follows
        await self._complete_for_app(receive, send, started=state["started"])

    async def _complete_for_app(self, receive: Receive, send: Send, *, started: bool) -> None:
        if started:
            await send({"type": "lifespan.startup.complete"})
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _run(self._startup, "start-up")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _run(self._shutdown, "shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _run(hooks: Sequence[Hook], phase: str) -> None:
    for hook in hooks:
        try:
            await hook()
        except Exception:
            logger.exception("asgi_observe: a %s hook failed; the app keeps serving", phase)
