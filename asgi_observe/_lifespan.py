"""Run the stack's own start-up and shutdown work inside the ASGI lifespan protocol.

The tracing flush and the internal metrics listener must start and stop with the app,
whichever server runs it and whether or not the wrapped app supports lifespan itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Hook", "LifespanHooks", "StartupAbortedError"]

logger = logging.getLogger("asgi_observe")

Hook = Callable[[], Awaitable[None]]


class StartupAbortedError(Exception):
    """Raised by a start-up hook whose failure must stop the app (a configuration error).

    Any other exception from a hook is reported and the app serves on: observability
    failing must not take the service down, but a misconfiguration must not pass silently.
    """


class LifespanHooks:
    """Run `startup` hooks before the app's start-up and `shutdown` hooks after its shutdown.

    The server's ``lifespan.startup`` message is taken first, the hooks run, and the
    message is then handed to the app. A hook raising `StartupAbortedError` answers
    ``lifespan.startup.failed`` with its message and the app is not started.

    The app's own start-up failure is never hidden: an app that raises after taking the
    ``lifespan.startup`` message gets ``lifespan.startup.failed`` (naming the exception)
    answered for it and the exception re-raised, so the server reports "Application
    startup failed" whether or not it runs lifespan in ``auto`` mode. Only an app that
    raises (or returns) *before receiving anything* is taken as not supporting lifespan:
    the protocol is then completed on its behalf, so the hooks still run. Shutdown hooks
    also run when the app's own start-up fails, so anything the start-up hooks opened is
    closed again.
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
        first = await receive()
        if first["type"] == "lifespan.startup":
            failure = await _run(self._startup, "start-up")
            if failure is not None:
                await _run(self._shutdown, "shutdown")
                await send({"type": "lifespan.startup.failed", "message": failure})
                return
        pending: list[Message] = [first]
        answered = False
        received = False
        shut_down = False

        async def receive_after_hooks() -> Message:
            nonlocal received
            received = True
            return pending.pop() if pending else await receive()

        async def send_running_hooks(message: Message) -> None:
            nonlocal answered, shut_down
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                answered = True
            if (
                kind.startswith("lifespan.shutdown.") or kind == "lifespan.startup.failed"
            ) and not shut_down:
                shut_down = True
                await _run(self._shutdown, "shutdown")
            await send(message)

        try:
            await self.app(scope, receive_after_hooks, send_running_hooks)
        except Exception as exc:
            if answered:
                raise
            if received:
                # It took a lifespan message, so it supports lifespan and its start-up
                # failed: report it as the failure it is, never as a started app.
                await self._fail_for_app(exc, send_running_hooks)
                raise
            logger.debug(
                "asgi_observe: the app does not support lifespan; completing it", exc_info=True
            )
        if answered:
            return  # the app ran the protocol; the server decides what follows
        pending.clear()  # a start-up message the app never took is answered below
        await self._complete_for_app(
            receive_after_hooks, send, started=first["type"] == "lifespan.startup"
        )

    @staticmethod
    async def _fail_for_app(exc: Exception, send: Send) -> None:
        """Answer ``lifespan.startup.failed`` for an app that raised during its start-up."""
        logger.error("asgi_observe: the application's lifespan start-up raised", exc_info=exc)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        await send({"type": "lifespan.startup.failed", "message": message})

    async def _complete_for_app(self, receive: Receive, send: Send, *, started: bool) -> None:
        if started:
            await send({"type": "lifespan.startup.complete"})
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":  # the first message was not start-up
                failure = await _run(self._startup, "start-up")
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _run(self._shutdown, "shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _run(hooks: Sequence[Hook], phase: str) -> str | None:
    """Run `hooks` in order; return the message of a `StartupAbortedError`, if any."""
    for hook in hooks:
        try:
            await hook()
        except StartupAbortedError as exc:
            logger.error("asgi_observe: %s", exc)  # noqa: TRY400 - the message is the whole story
            return str(exc)
        except Exception:
            logger.exception("asgi_observe: a %s hook failed; the app keeps serving", phase)
    return None
