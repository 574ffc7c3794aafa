"""The built-in health checks: database, Redis, disk, HTTP and any function.

Each factory validates its argument when it is called (at start-up, where a mistake is
cheap) and returns a `Check`. Drivers are recognised by the module and class names of the
object given, so SQLAlchemy, asyncpg, psycopg, redis-py and httpx are imported only by the
code that needs them, and none of them is required to import this module. Blocking work
(a sync driver, ``statvfs``, a plain function) runs on a dedicated thread, never on the
event loop. Default timeouts are the seed's: database 2 s, Redis 1 s.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import shutil
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, cast

from asgi_observe.health._check import (
    Check,
    CheckFunction,
    CheckResult,
    Status,
    in_thread,
    sanitize_message,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Check",
    "CheckFunction",
    "CheckResult",
    "Status",
    "callable",
    "database",
    "disk",
    "http",
    "redis",
]

_SELECT_ONE = "SELECT 1"


def _classes(obj: object) -> list[tuple[str, str]]:
    """(top-level module, class name) for the object's type and its bases."""
    return [((cls.__module__ or "").split(".")[0], cls.__name__) for cls in type(obj).__mro__]


# --- database ---------------------------------------------------------------------------

_DATABASE_KINDS: Mapping[tuple[str, str], str] = {
    ("sqlalchemy", "AsyncEngine"): "sqlalchemy_async",
    ("sqlalchemy", "Engine"): "sqlalchemy_sync",
    ("asyncpg", "Pool"): "asyncpg",
    ("asyncpg", "Connection"): "asyncpg",
    ("asyncpg", "PoolConnectionProxy"): "asyncpg",
    ("psycopg", "AsyncConnection"): "psycopg_async",
    ("psycopg", "Connection"): "psycopg_sync",
    ("psycopg_pool", "AsyncConnectionPool"): "psycopg_pool_async",
    ("psycopg_pool", "ConnectionPool"): "psycopg_pool_sync",
}

_SUPPORTED_DATABASES = (
    "a SQLAlchemy AsyncEngine (or Engine), an asyncpg Pool or Connection, "
    "a psycopg AsyncConnection (or Connection), or a psycopg_pool "
    "AsyncConnectionPool (or ConnectionPool)"
)


def _database_run(target: Any, kind: str, name: str) -> CheckFunction:
    if kind == "sqlalchemy_async":

        async def ping_sqlalchemy() -> None:
            async with target.connect() as conn:
                await conn.exec_driver_sql(_SELECT_ONE)

        return ping_sqlalchemy
    if kind == "asyncpg":

        async def ping_asyncpg() -> None:
            await target.fetchval(_SELECT_ONE)

        return ping_asyncpg
    if kind == "psycopg_async":

        async def ping_psycopg() -> None:
            await target.execute(_SELECT_ONE)

        return ping_psycopg
    if kind == "psycopg_pool_async":

        async def ping_psycopg_pool() -> None:
            async with target.connection() as conn:
                await conn.execute(_SELECT_ONE)

        return ping_psycopg_pool

    def ping_blocking() -> None:
        if kind == "sqlalchemy_sync":
            with target.connect() as conn:
                conn.exec_driver_sql(_SELECT_ONE)
        elif kind == "psycopg_pool_sync":
            with target.connection() as conn:
                conn.execute(_SELECT_ONE)
        else:  # psycopg_sync
            target.execute(_SELECT_ONE)

    return in_thread(ping_blocking, name=name)


def database(
    engine_or_pool: object,
    *,
    timeout: float = 2.0,
    name: str = "database",
    critical: bool = True,
) -> Check:
    """Run ``SELECT 1`` through an engine, pool or connection.

    Args:
        engine_or_pool: a SQLAlchemy ``AsyncEngine`` (any async driver) or ``Engine``, an
            asyncpg ``Pool`` or ``Connection``, a psycopg ``AsyncConnection`` or
            ``Connection``, or a psycopg_pool pool. A pool is preferred: a single
            connection shared with the app may be busy when the probe arrives.
        timeout: seconds before the check fails (connect included); the seed's 2 s.
        name: the key in the readiness answer and the metrics label.
        critical: whether a failure makes readiness fail (otherwise it is ``warn``).

    Raises:
        TypeError: for any other object, naming its type and what is supported.
    """
    kind = next(
        (_DATABASE_KINDS[c] for c in _classes(engine_or_pool) if c in _DATABASE_KINDS), None
    )
    if kind is None:
        cls = type(engine_or_pool)
        msg = (
            f"checks.database() cannot check a {cls.__module__}.{cls.__qualname__}: "
            f"pass {_SUPPORTED_DATABASES}"
        )
        raise TypeError(msg)
    return Check(
        name=name,
        run=_database_run(engine_or_pool, kind, name),
        timeout=timeout,
        critical=critical,
        component_type="datastore",
    )


# --- redis ------------------------------------------------------------------------------


def redis(
    client: object,
    *,
    timeout: float = 1.0,
    name: str = "redis",
    critical: bool = True,
) -> Check:
    """Send ``PING`` with a redis-py client.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``); a blocking
            ``redis.Redis`` is pinged on a thread.
        timeout: seconds before the check fails; the seed's 1 s. Set the client's own
            ``socket_connect_timeout`` too, so abandoned attempts do not linger.
        name: the key in the readiness answer and the metrics label.
        critical: whether a failure makes readiness fail (otherwise it is ``warn``).

    Raises:
        TypeError: if the object has no ``ping`` method.
    """
    ping = getattr(client, "ping", None)
    if not builtins.callable(ping):
        cls = type(client)
        msg = (
            f"checks.redis() needs a redis-py client (redis.asyncio.Redis), "
            f"got a {cls.__module__}.{cls.__qualname__} without ping()"
        )
        raise TypeError(msg)
    module = type(client).__module__ or ""
    run: CheckFunction
    if module.startswith("redis.asyncio") or inspect.iscoroutinefunction(ping):

        async def ping_async() -> object:
            return await ping()

        run = ping_async
    else:
        run = in_thread(ping, name=name)
    return Check(name=name, run=run, timeout=timeout, critical=critical, component_type="datastore")


# --- disk -------------------------------------------------------------------------------


def disk(
    path: str = "/",
    *,
    warn_percent: float = 85.0,
    fail_percent: float = 95.0,
    timeout: float = 1.0,
    name: str = "disk",
    critical: bool = True,
) -> Check:
    """Report how full the filesystem holding `path` is, as ``usage_percent``.

    The percentage is the one ``df`` prints: used / (used + available to unprivileged
    users), so the root-reserved blocks count as full. At `warn_percent` the check is
    ``warn`` (readiness stays 200); at `fail_percent` it is ``fail``. The seed gives the
    disk no timeout; `statvfs` on a hung network filesystem can block forever, so it runs
    on a thread under `timeout` like every other check.

    Raises:
        ValueError: unless 0 < warn_percent <= fail_percent <= 100.
    """
    if not (0 < warn_percent <= fail_percent <= 100):
        msg = (
            "checks.disk() needs 0 < warn_percent <= fail_percent <= 100, "
            f"got warn_percent={warn_percent!r}, fail_percent={fail_percent!r}"
        )
        raise ValueError(msg)

    def measure() -> dict[str, object]:
        usage = shutil.disk_usage(path)
        denominator = usage.used + usage.free
        percent = round(usage.used / denominator * 100, 1) if denominator else 0.0
        result: dict[str, object] = {"usage_percent": percent}
        if percent >= fail_percent:
            result["status"] = "fail"
            result["message"] = f"disk usage {percent}% is at or above {fail_percent:g}%"
        elif percent >= warn_percent:
            result["status"] = "warn"
            result["message"] = f"disk usage {percent}% is at or above {warn_percent:g}%"
        return result

    return Check(
        name=name,
        run=in_thread(measure, name=name),
        timeout=timeout,
        critical=critical,
        component_type="system",
        measurement="utilization",
        observed_key="usage_percent",
        observed_unit="percent",
    )


# --- http -------------------------------------------------------------------------------


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        msg = "checks.http() needs httpx: pip install asgi-observe[httpx]"
        raise ImportError(msg) from exc
    return httpx


class _LoopClient:
    """One ``httpx.AsyncClient`` for a check's lifetime, made lazily in the running loop.

    Building a client builds an SSL context, which stalls the event loop for tens of
    milliseconds; doing it on every probe would stall the app that often. A client is
    bound to the loop it first ran in, so a run in another loop (a new loop per test, a
    server restarted in-process) gets a client of its own. Keep-alive is off: each run
    opens a fresh connection, so a stale pooled connection cannot hide an outage, and a
    client left behind by a finished loop holds no socket.
    """

    def __init__(self, httpx_module: Any, timeout: float) -> None:
        self._httpx = httpx_module
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._client
        if client is None or self._loop is not loop or client.is_closed:
            client = self._httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                limits=self._httpx.Limits(max_keepalive_connections=0),
            )
            self._client, self._loop = client, loop
        return client

    async def discard(self, client: httpx.AsyncClient) -> None:
        """Close `client` after a run was cancelled (the check's timeout) mid-request.

        The abandoned request may still hold its socket; closing the client releases it
        now rather than at garbage collection. The next run makes a new client.
        """
        if self._client is client:
            self._client = self._loop = None
        await client.aclose()

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()


def http(
    url: str,
    *,
    timeout: float = 2.0,
    expected_status: int | Collection[int] | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
    name: str | None = None,
    critical: bool = True,
) -> Check:
    """Request `url` with httpx and check the status code.

    Args:
        url: an absolute ``http://`` or ``https://`` URL.
        timeout: seconds before the check fails, connect and read included.
        expected_status: a code or codes that pass (default: any 2xx).
        method: the request method (``HEAD`` is cheaper when the peer supports it).
        headers: extra request headers (an API key, say); never reported.
        client: an ``httpx.AsyncClient`` to use (e.g. with mTLS), owned by the caller. By
            default the check makes one client on its first run and reuses it (making
            one costs an SSL context, tens of milliseconds of a stalled event loop),
            without keep-alive, so each run opens a fresh connection and a stale pooled
            one cannot hide an outage. It is closed by `HealthApp.aclose` or when the
            health app's lifespan shuts down; a run in another event loop gets its own.
        name: the key in the readiness answer (default: the URL's host).
        critical: whether a failure makes readiness fail (otherwise it is ``warn``).

    Raises:
        ImportError: when httpx is not installed (the ``httpx`` extra).
        ValueError: for a URL that is not absolute http(s).
    """
    httpx_module = _import_httpx()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"checks.http() needs an absolute http(s) URL, got {sanitize_message(url)!r}"
        raise ValueError(msg)
    if expected_status is None:
        accepted: Collection[int] = range(200, 300)
    elif isinstance(expected_status, int):
        accepted = (expected_status,)
    else:
        accepted = frozenset(expected_status)
    shown_url = sanitize_message(urllib.parse.urlunsplit(parts._replace(query="", fragment="")))
    request_headers = dict(headers or {})
    own = _LoopClient(httpx_module, timeout)  # makes a client only if `client` is None

    async def request() -> dict[str, object]:
        if client is not None:
            response = await client.request(method, url, headers=request_headers)
        else:
            used = own.get()
            try:
                response = await used.request(method, url, headers=request_headers)
            except asyncio.CancelledError:
                await own.discard(used)
                raise
        code: int = response.status_code
        if code in accepted:
            return {"status_code": code}
        return {
            "status": "fail",
            "status_code": code,
            "message": f"unexpected status {code} from {shown_url}",
        }

    return Check(
        name=name or parts.hostname,
        run=request,
        timeout=timeout,
        critical=critical,
        component_type="component",
        close=own.aclose if client is None else None,
    )


# --- any function -----------------------------------------------------------------------


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def callable(
    fn: Callable[[], object],
    *,
    timeout: float = 2.0,
    name: str | None = None,
    critical: bool = True,
) -> Check:
    """Turn any function of no arguments into a check.

    An async function runs on the event loop; a plain function runs on a dedicated
    thread, so it may block (a sync driver, a file read) without stalling the server, and
    a call that hangs is abandoned at `timeout` (one such thread at most per check).
    Returning ``None``/``True`` passes, ``False`` fails, a dict may set ``status``,
    ``message`` and extra reported fields; raising fails with the exception's type and
    text (redacted).

    Raises:
        TypeError: if `fn` is not callable.
        ValueError: if no `name` is given and `fn` has no usable ``__name__`` (a lambda).
    """
    given: object = fn  # typed, but passed by users at runtime
    if not builtins.callable(given):
        msg = f"checks.callable() needs a function, got {fn!r}"
        raise TypeError(msg)
    label = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(label, str) or not label or label == "<lambda>":
        msg = f"checks.callable() cannot name {fn!r}: pass name=..."
        raise ValueError(msg)
    run = cast(CheckFunction, fn) if _is_async(fn) else in_thread(fn, name=label)
    return Check(name=label, run=run, timeout=timeout, critical=critical)
