"""The internal metrics listener: ``/metrics`` on its own host and port, for the app's lifetime.

The seed's "most secure" option is a separate port bound to localhost or an internal
network, so the public listener never serves metrics at all. The ASGI server runs one
listener, so this module runs a second, minimal HTTP/1.1 server with asyncio streams
in the same event loop. It is started and stopped by `instrument()`'s lifespan hooks and
works under any ASGI server (uvicorn, hypercorn, granian, daphne).

It is deliberately small: exact-path routing to ASGI apps, GET-sized requests (no
chunked request bodies), keep-alive for Prometheus' connection reuse, and timeouts so a
slow or idle client cannot hold a connection forever.

Under a multi-worker server every worker tries to bind the port. `sibling_holds_port`
and `worker_supervisor` tell a sibling worker holding the port apart from a foreign
process, so only the former lets start-up go on (the rule is in their docstrings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from urllib.parse import unquote

import psutil

from asgi_observe.types import ASGIApp, Message, Scope

__all__ = ["InternalMetricsServer", "sibling_holds_port", "worker_supervisor"]

logger = logging.getLogger("asgi_observe")

_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}


class _BadRequestError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class InternalMetricsServer:
    """Serve `routes` (exact path → ASGI app) on `host`:`port` between `start` and `stop`.

    Args:
        routes: e.g. ``{"/metrics": metrics_app(...), "/metrics/legacy": legacy_metrics_app()}``;
            any other path is 404.
        host: the address to bind (``METRICS_INTERNAL_HOST``, default ``127.0.0.1``).
        port: the TCP port (``METRICS_INTERNAL_PORT``); 0 picks a free one (see `port`).
        timeout: seconds allowed to read one request head, and idle time before a
            kept-alive connection is closed.

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
            server = await asyncio.start_server(
                self._serve_connection, self.host, self.port, limit=_MAX_HEAD
            )
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
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            logger.exception("asgi_observe: internal metrics listener failed on a connection")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; returns whether the connection stays open."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout)
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection between requests
        except asyncio.LimitOverrunError:
            await self._write(writer, 431, [], b"", head_only=False, close=True)
            return False
        try:
            scope, body, keep_alive = await self._parse(head, reader, writer)
        except _BadRequestError as exc:
            await self._write(writer, exc.status, [], b"", head_only=False, close=True)
            return False
        app = self._routes.get(scope["path"])
        if app is None:
            await self._write(
                writer, 404, [], b"Not Found\n", head_only=False, close=not keep_alive
            )
            return keep_alive
        return await self._run_app(app, scope, body, writer, keep_alive=keep_alive)

    async def _parse(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Scope, bytes, bool]:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith(b"/"):
            raise _BadRequestError(400)
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise _BadRequestError(505)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name:
                raise _BadRequestError(400)
            headers.append((name.lower(), value.strip()))
        values = dict(headers)
        if b"transfer-encoding" in values:
            raise _BadRequestError(501)
        length_text = values.get(b"content-length", b"0")
        if not length_text.isdigit():
            raise _BadRequestError(400)
        length = int(length_text)
        if length > _MAX_BODY:
            raise _BadRequestError(413)
        body = await asyncio.wait_for(reader.readexactly(length), self._timeout) if length else b""
        connection = values.get(b"connection", b"").lower()
        keep_alive = version == b"HTTP/1.1" and b"close" not in connection
        raw_path, _, query = target.partition(b"?")
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version[5:].decode("ascii"),
            "method": method.decode("ascii").upper(),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None,
            "server": (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None,
            "state": {},
        }
        return scope, body, keep_alive

    async def _run_app(
        self,
        app: ASGIApp,
        scope: Scope,
        body: bytes,
        writer: asyncio.StreamWriter,
        *,
        keep_alive: bool,
    ) -> bool:
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
            await self._write(
                writer, 500, [], b"Internal Server Error\n", head_only=False, close=True
            )
            return False
        await self._write(
            writer,
            status,
            headers,
            b"".join(chunks),
            head_only=scope["method"] == "HEAD",
            close=not keep_alive,
        )
        return keep_alive

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        head_only: bool,
        close: bool,
    ) -> None:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        names = {name for name, _ in headers}
        if b"content-type" not in names and body:
            out.append(b"content-type: text/plain; charset=utf-8\r\n")
        if b"content-length" not in names:
            out.append(b"content-length: %d\r\n" % len(body))
        out.extend(
            name + b": " + value + b"\r\n" for name, value in headers if name != b"connection"
        )
        if close:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if not head_only:
            out.append(body)
        writer.write(b"".join(out))
        await writer.drain()


_SUPERVISORS = ("uvicorn", "gunicorn")
# What multiprocessing's spawn start method puts on a child's command line.
_SPAWNED = "--multiprocessing-fork"


def _listens_on(process: psutil.Process, port: int) -> bool:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        for conn in connections
    )


def _identity(process: psutil.Process) -> tuple[str, tuple[str, ...]]:
    command = process.cmdline()
    # Spawned workers differ only in their pipe handles: they are one program.
    return process.exe(), (_SPAWNED,) if _SPAWNED in command else tuple(command)


def _worker_siblings(parent: psutil.Process) -> list[psutil.Process]:
    """The other children of `parent` running the same program as this process.

    Forked workers (gunicorn) share this process's command line; spawned ones (uvicorn
    ``--workers``, hypercorn) are all multiprocessing spawn children. A shell's other
    children (``| tee``) and multiprocessing's helper processes are neither.
    """
    me = psutil.Process()
    mine = _identity(me)
    siblings: list[psutil.Process] = []
    for child in parent.children():
        if child.pid == me.pid:
            continue
        try:
            if _identity(child) == mine:
                siblings.append(child)
        except psutil.Error:
            continue
    return siblings


def _parent() -> psutil.Process | None:
    try:
        parent = psutil.Process().parent()
    except psutil.Error:
        return None
    # Orphaned (or started by init): no supervisor whose workers could share the port.
    return None if parent is None or parent.pid <= 1 else parent


def sibling_holds_port(port: int) -> bool:
    """Whether a *sibling worker* is the process listening on TCP `port`.

    The rule, applied after a bind failed with EADDRINUSE: another child of this
    process's parent, running the same program, listens on `port`, and the parent
    itself does not. Sibling workers
    of uvicorn ``--workers``, gunicorn and hypercorn are children of one supervisor. The
    second condition excludes the server's public port, which the supervisor opens and
    its workers inherit. Any other holder (an unrelated program, another service, a
    stale process) is foreign, and start-up must fail on it.
    """
    parent = _parent()
    if parent is None or _listens_on(parent, port):
        return False
    try:
        siblings = _worker_siblings(parent)
    except psutil.Error:
        return False
    return any(_listens_on(sibling, port) for sibling in siblings)


def worker_supervisor() -> str | None:
    """What runs this process as one of several workers, or None for a single process.

    The rule: the parent process is a uvicorn or gunicorn supervisor (its command line
    runs ``uvicorn``, outside uvicorn's ``--reload`` mode which runs one process, or
    ``gunicorn``, which can add workers at any time), or the parent has another child
    running the same program right now (hypercorn and other servers with a worker pool).
    """
    parent = _parent()
    if parent is None:
        return None
    try:
        command = parent.cmdline()
    except psutil.Error:
        return None
    for token in command[:4]:
        # gunicorn may retitle its master "gunicorn: master [app]".
        name = os.path.basename(token).split(":")[0]
        if name in _SUPERVISORS and not (name == "uvicorn" and "--reload" in command):
            return name
    try:
        has_siblings = bool(_worker_siblings(parent))
    except psutil.Error:
        return None
    return os.path.basename(command[0]) if command and has_siblings else None
