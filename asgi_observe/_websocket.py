"""What one websocket connection did, read from the ASGI messages crossing a middleware.

Metrics, tracing and the access log each observe a connection through their own
``receive``/``send`` wrappers (every middleware works alone), and all three must agree on
what happened: the outcome, the close code, how many messages went each way and how
long the connection lasted. The rules live here once, as `WebSocketSession`.

The messages are those of the ASGI websocket protocol and its denial-response extension
(https://asgi.readthedocs.io/en/latest/specs/www.html#websocket): the app receives
``websocket.connect``, ``websocket.receive`` and ``websocket.disconnect``, and sends
``websocket.accept``, ``websocket.send``, ``websocket.close`` or, instead of accepting,
``websocket.http.response.start`` and ``websocket.http.response.body``. Observing them
never changes, copies, reorders or holds back a message.
"""

from __future__ import annotations

from time import perf_counter

from asgi_observe.types import Message

__all__ = [
    "ACCEPTED",
    "DIRECTION_RECEIVED",
    "DIRECTION_SENT",
    "ERROR",
    "OUTCOMES",
    "REJECTED",
    "WebSocketSession",
]

ACCEPTED = "accepted"
"""The app sent ``websocket.accept`` (and did not raise)."""

REJECTED = "rejected"
"""The app ended the handshake without accepting: ``websocket.close`` before accepting, an
HTTP denial response (``websocket.http.response.start``), or returning without either
(the server then refuses the handshake with 403)."""

ERROR = "error"
"""The app raised, before or after accepting."""

OUTCOMES: tuple[str, ...] = (ACCEPTED, REJECTED, ERROR)

DIRECTION_RECEIVED = "received"
"""``websocket.receive`` messages the app read."""

DIRECTION_SENT = "sent"
"""``websocket.send`` messages the app sent."""

_DEFAULT_CLOSE_CODE = 1000  # ASGI: websocket.close "code" defaults to 1000
_NO_STATUS_CODE = 1005  # ASGI: websocket.disconnect "code" defaults to 1005 (RFC 6455 7.1.5)


def _close_code(message: Message, default: int) -> int | None:
    code = message.get("code", default)
    if code is None:
        return default
    # Bounded: a code is an int the server put there; anything else is not reported.
    return code if type(code) is int and 0 <= code <= 65535 else None


class WebSocketSession:
    """The state of one connection, fed with every message the app receives and sends.

    ``accepted_at`` and ``ended_at`` are `time.perf_counter` readings. The connection ends
    at the first of: the app sends ``websocket.close`` (or finishes a denial response's
    first message), the app receives ``websocket.disconnect``, or `end` is called when the
    app returns or raises. The close code is the first one seen: the app's
    ``websocket.close`` (default 1000) or the client's ``websocket.disconnect`` (default
    1005); None when the connection ended without either (a denial response, an app that
    returned or raised without closing).
    """

    __slots__ = (
        "accepted_at",
        "close_code",
        "decided",
        "denial_status",
        "ended_at",
        "error",
        "received",
        "sent",
        "started_at",
    )

    def __init__(self) -> None:
        self.started_at = perf_counter()
        self.accepted_at: float | None = None
        self.ended_at: float | None = None
        self.decided = False  # the app accepted or refused the handshake
        self.denial_status: int | None = None
        self.close_code: int | None = None
        self.received = 0
        self.sent = 0
        self.error = False

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None

    @property
    def outcome(self) -> str:
        """`ERROR` when the app raised, else `ACCEPTED` or `REJECTED`."""
        if self.error:
            return ERROR
        return ACCEPTED if self.accepted_at is not None else REJECTED

    def on_receive(self, message: Message) -> str:
        """Note a message the app received; returns its type."""
        kind: str = message["type"]
        if kind == "websocket.receive":
            self.received += 1
        elif kind == "websocket.disconnect":
            if self.close_code is None:
                self.close_code = _close_code(message, _NO_STATUS_CODE)
            self.end()
        return kind

    def on_send(self, message: Message) -> str:
        """Note a message the app sends (before it is passed on); returns its type."""
        kind: str = message["type"]
        if kind == "websocket.send":
            self.sent += 1
        elif kind == "websocket.accept":
            if not self.decided:
                self.decided = True
                self.accepted_at = perf_counter()
        elif kind == "websocket.close":
            self.decided = True
            if self.close_code is None:
                self.close_code = _close_code(message, _DEFAULT_CLOSE_CODE)
            self.end()
        elif kind == "websocket.http.response.start" and not self.decided:
            self.decided = True
            status = message.get("status")
            self.denial_status = status if type(status) is int else None
            self.end()
        return kind

    def end(self) -> None:
        """Mark the end of the connection, once; later calls keep the first time."""
        if self.ended_at is None:
            self.ended_at = perf_counter()

    def duration(self) -> float:
        """Seconds the connection was open: from accept to its end; for a connection never
        accepted, from its arrival to its end (the handshake's handling)."""
        end = perf_counter() if self.ended_at is None else self.ended_at
        begin = self.started_at if self.accepted_at is None else self.accepted_at
        return max(0.0, end - begin)
