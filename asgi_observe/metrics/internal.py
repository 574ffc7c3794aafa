"""The internal metrics listener: ``/metrics`` on its own host and port, for the app's lifetime.

The most secure way to keep metrics private is a separate port bound to localhost or an
internal network, so the public listener never serves metrics at all. The ASGI server
runs one listener, so this module runs a second, small HTTP/1.1 server with asyncio
streams in the same event loop. It is started and stopped by `instrument()`'s lifespan
hooks and works under any ASGI server (uvicorn, hypercorn, granian, daphne).

HTTP is parsed by h11 (the HTTP/1.1 state machine uvicorn's default protocol uses), not
by hand: framing, header syntax, ``Content-Length``/``Transfer-Encoding`` and keep-alive
follow RFC 9112. What this module adds is the exposure policy: exact-path routing to
ASGI apps, bounded request heads (431) and bodies (413), and a deadline for each request
so a slow client (slowloris) gets a 408 and loses its connection instead of holding it.
Reads and writes are asynchronous: nothing here blocks the app's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import unquote

import h11

from asgi_observe.types import ASGIApp, Message, Scope

__all__ = ["InternalMetricsServer"]

logger = logging.getLogger("asgi_observe")

MAX_HEAD = 16 * 1024
"""Bytes allowed for a request line and headers; larger heads get 431."""

MAX_BODY = 64 * 1024
"""Bytes allowed for a request body (scrapes have none); larger bodies get 413."""

_READ_SIZE = 16 * 1024


class _RequestError(Exception):
    """The request cannot be served; answer `status` and close the connection."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _ClientGoneError(Exception):
    """The client closed the connection or sent nothing more before the deadline."""


class InternalMetricsServer:
    """Serve `routes` (exact path → ASGI app) on `host`:`port` between `start` and `stop`.

    Args:
        routes: e.g. ``{"/metrics": metrics_app(...), "/metrics/legacy": legacy_metrics_app()}``;
            any other path is 404.
        host: the address to bind (``METRICS_INTERNAL_HOST``, default ``127.0.0.1``).
        port: the TCP port (``METRICS_INTERNAL_PORT``); 0 picks a free one (see `port`).
        timeout: seconds allowed to receive one whole request (head and body), and idle
            time before a kept-alive connection is closed. A request still incomplete at
            its deadline is answered 408.

    `start` raises `OSError` naming the address and the variables when the port cannot
    be bound (in use, not permitted). The ASGI apps get a normal ``http`` scope whose
    ``client`` is the socket peer, so `MetricsGuard` allow-lists work here too.
    """

    def __init__(
        self,
        routes: Mapping[str, ASGIApp],
        *,
        host: str = "127.0.0.1",
        port: int,
        timeout: float = 30.0,
    ) -> None:
        if not 0 <= port <= 65535:
            msg = f"invalid METRICS_INTERNAL_PORT {port!r}: expected a TCP port number 1-65535"
            raise ValueError(msg)
        self._routes = dict(routes)
        self.host = host
        self.port = port
        self._timeout = timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        """Whether the listener is accepting connections."""
        return self._server is not None

    async def start(self) -> None:
        """Bind and start accepting; `port` is updated when 0 was asked for."""
        if self._server is not None:
            return
        try:
            server = await asyncio.start_server(self._serve_connection, self.host, self.port)
        except OSError as exc:
            msg = (
                f"cannot start the internal metrics listener on {self.host}:{self.port} "
                f"(METRICS_INTERNAL_HOST/METRICS_INTERNAL_PORT): {exc.strerror or exc}"
            )
            raise OSError(exc.errno, msg) from exc
        sockets = server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        logger.info("asgi_observe: internal metrics listener on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting and close open connections (in-flight responses are cut)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while await self._serve_one(connection, reader, writer):
                connection.start_next_cycle()
        except (asyncio.CancelledError, ConnectionError, _ClientGoneError):
            pass
        except Exception:
            logger.exception("asgi_observe: internal metrics listener failed on a connection")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next_event(
        self, connection: h11.Connection, reader: asyncio.StreamReader, deadline: float
    ) -> object:
        """The next h11 event, reading as needed until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(reader.read(_READ_SIZE), remaining)
            connection.receive_data(data)  # b"" tells h11 the peer closed

    async def _serve_one(
        self, connection: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; returns whether the connection stays open for another."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            request, body = await self._receive_request(connection, reader, deadline)
        except _RequestError as exc:
            await self._refuse(connection, writer, exc.status)
            return False
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            # Idle between requests: just close. Part of a request received: 408.
            if connection.their_state is not h11.IDLE or connection.trailing_data[0]:
                await self._refuse(connection, writer, 408)
            return False
        scope = self._scope(request, writer)
        app = self._routes.get(scope["path"])
        headers: list[tuple[bytes, bytes]] = []
        if app is None:
            status, content = 404, b"Not Found\n"
        else:
            status, headers, content = await self._run_app(app, scope, body)
        if status == 500:
            headers.append((b"connection", b"close"))  # a broken endpoint: start afresh
        await self._respond(connection, writer, status, headers, content, method=request.method)
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE

    async def _receive_request(
        self, connection: h11.Connection, reader: asyncio.StreamReader, deadline: float
    ) -> tuple[h11.Request, bytes]:
        try:
            event = await self._next_event(connection, reader, deadline)
            if isinstance(event, h11.ConnectionClosed):
                raise _ClientGoneError
            if not isinstance(event, h11.Request):
                raise _RequestError(400)
            _check_head(event)
            chunks: list[bytes] = []
            size = 0
            while True:
                part = await self._next_event(connection, reader, deadline)
                if isinstance(part, h11.Data):
                    size += len(part.data)
                    if size > MAX_BODY:
                        raise _RequestError(413)
                    chunks.append(bytes(part.data))
                elif isinstance(part, h11.EndOfMessage):
                    return event, b"".join(chunks)
                elif isinstance(part, h11.ConnectionClosed):
                    raise _ClientGoneError
        except h11.RemoteProtocolError as exc:
            # h11's hint: 431 for an oversized head, 505 for another HTTP version, else 400.
            raise _RequestError(exc.error_status_hint) from None

    def _scope(self, request: h11.Request, writer: asyncio.StreamWriter) -> Scope:
        raw_path, _, query = bytes(request.target).partition(b"?")
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii").upper(),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None,
            "server": (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None,
            "state": {},
        }

    async def _run_app(
        self, app: ASGIApp, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run `app` to completion and return its response (buffered: scrapes are small)."""
        request_sent = False
        response_done = asyncio.Event()
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await response_done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers.extend((bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    response_done.set()

        try:
            await app(scope, receive, send)
        except Exception:
            logger.exception("asgi_observe: the internal metrics endpoint raised")
            status = 0
        finally:
            response_done.set()
        if not status:
            return 500, [], b"Internal Server Error\n"
        return status, headers, b"".join(chunks)

    async def _respond(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
        *,
        method: bytes,
    ) -> None:
        names = {name for name, _ in headers}
        # h11 frames the body: it must know its length (and owns Connection headers).
        out = [
            (name, value) for name, value in headers if name != b"connection" or value == b"close"
        ]
        if b"content-length" not in names:
            out.append((b"content-length", str(len(content)).encode("ascii")))
        if b"content-type" not in names and content:
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        response = h11.Response(status_code=status, headers=out, reason=_reason(status))
        data = connection.send(response) or b""
        if method != b"HEAD" and content:
            data += connection.send(h11.Data(data=content)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()

    async def _refuse(
        self, connection: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        """Answer an error and make the connection close, when a response can still go."""
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = b"%d %s\n" % (status, _reason(status))
        try:
            data = connection.send(
                h11.Response(
                    status_code=status,
                    reason=_reason(status),
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode("ascii")),
                        (b"connection", b"close"),
                    ],
                )
            )
            data = (data or b"") + (connection.send(h11.Data(data=body)) or b"")
            data += connection.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return  # h11 cannot frame a response in this state: closing says enough
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _check_head(request: h11.Request) -> None:
    """Refuse what h11 accepts but this listener will not serve.

    h11 bounds only a head still incomplete in its buffer, so one that arrives whole
    in a few reads is measured here; a body too large is refused before waiting for it;
    and h11 parses any ``HTTP/x.y`` request line, while this listener speaks 1.0 and 1.1.
    """
    if request.http_version not in (b"1.0", b"1.1"):
        raise _RequestError(505)
    if not request.target.startswith(b"/"):  # origin-form only: no proxying, no "*"
        raise _RequestError(400)
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
        if name == b"content-length" and int(value) > MAX_BODY:
            raise _RequestError(413)
    if size > MAX_HEAD:
        raise _RequestError(431)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:  # a status the app invented
        return b""
