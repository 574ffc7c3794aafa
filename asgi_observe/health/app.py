"""`HealthApp`: the Kubernetes probes as one pure ASGI app, mountable anywhere.

Paths are read relative to the mount point with the stack's one rule
(`asgi_observe._asgi.relative_path`), whichever way the mount was made: Starlette 1.x
``Mount`` (and the ASGI spec) keep the full path in ``scope["path"]`` and the prefix in
``scope["root_path"]``; older Starlette and some dispatchers strip the prefix from
``path``. Both give the same sub-path here. The sub-path template is left in
``scope["asgi_observe.subroute"]`` so metrics, spans and access logs label the request
``/health/ready`` rather than ``/health/{path}``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from asgi_observe._asgi import complete_lifespan, relative_path, respond
from asgi_observe.health import checks as builtin
from asgi_observe.health._check import Check, iso_utc
from asgi_observe.health._evaluate import Evaluator, Report
from asgi_observe.health._metrics import health_metrics
from asgi_observe.health._render import ServiceInfo, dumps, plain_checks, render_health_json
from asgi_observe.routes import SUBROUTE_SCOPE_KEY
from asgi_observe.types import Receive, Scope, Send

__all__ = ["CheckLike", "ChecksArg", "HealthApp"]

logger = logging.getLogger("asgi_observe")

CheckLike = Check | Callable[[], object]
"""A `Check`, or a function of no arguments that `checks.callable` wraps."""

ChecksArg = Mapping[str, CheckLike] | Sequence[CheckLike]
"""Checks by name, or a sequence of them (plain functions are named after themselves)."""

_HEALTH_JSON = b"application/health+json"
_ALLOW = b"GET, HEAD"
_SUBPATHS = {"": "", "/": "", "/live": "/live", "/ready": "/ready", "/startup": "/startup"}
_SUBPATHS.update({f"{sub}/": sub for sub in ("/live", "/ready", "/startup")})


def _content_headers(media_type: bytes, length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", media_type),
        (b"content-length", str(length).encode()),
        # A cached probe answer is a wrong one: proxies and browsers must not keep it.
        (b"cache-control", b"no-store"),
    ]


def _as_check(value: object, name: str | None, what: str) -> Check:
    if isinstance(value, Check):
        return value if name is None or value.name == name else replace(value, name=name)
    if callable(value):
        return builtin.callable(value, name=name)
    msg = f"{what} must hold Check objects or functions, got {value!r}"
    raise TypeError(msg)


def _normalize(checks: ChecksArg | None, *, what: str) -> tuple[Check, ...]:
    if checks is None:
        return ()
    given: object = checks  # typed, but passed by users at runtime
    if isinstance(checks, Mapping):
        normalized = [_as_check(value, name, what) for name, value in checks.items()]
    elif isinstance(given, (str, bytes)):
        msg = f"{what} must be a mapping or a sequence of checks, got {checks!r}"
        raise TypeError(msg)
    else:
        normalized = [_as_check(value, None, what) for value in checks]
    names = [check.name for check in normalized]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        msg = f"{what}: check names must be unique, repeated: {', '.join(duplicates)}"
        raise ValueError(msg)
    return tuple(normalized)


class HealthApp:
    """Liveness, readiness and startup probes plus the legacy service-info endpoint.

    Serves, relative to where it is mounted (``/health`` under `instrument()`):

    - ``""`` and ``/``: the legacy answer: status, version, environment, uptime and
      service information; touches no dependency.
    - ``/live``: ``{"status": "live", "timestamp": ...}``; touches nothing, so a slow
      database can never get the pod restarted.
    - ``/ready``: runs every check concurrently, each under its own timeout; 200
      ``ready`` or 503 ``not_ready`` when a critical check fails. Non-critical checks
      that fail are reported ``warn``. Feeds ``health_check_status{check}`` and
      ``health_check_duration_seconds{check}`` in `registry`.
    - ``/startup``: 503 ``starting`` until the startup checks have passed once, then 200
      ``started`` for good without running them again.

    ``Accept: application/health+json`` selects the IETF draft format. GET and HEAD only
    (405 otherwise); unknown sub-paths are a JSON 404; websocket connections are closed;
    the lifespan protocol is completed, so the app also runs on its own under a server.

    Args:
        checks: the readiness checks, by name (``{"database": checks.database(engine)}``;
            a plain function is wrapped with `checks.callable`) or as a sequence of `Check`.
        version: the service version reported by every answer.
        registry: where the health metrics go (default: prometheus-client's registry).
        environment: reported by the legacy endpoint.
        service_name: reported by the legacy endpoint and as health+json ``serviceId``.
        cache_ttl: seconds a readiness evaluation is reused; 0 evaluates on every probe
            (concurrent probes still share one evaluation).
        startup_checks: the checks gating ``/startup`` (default: the critical readiness
            checks, and a passing readiness evaluation counts as startup done).
    """

    def __init__(
        self,
        checks: ChecksArg | None = None,
        *,
        version: str = "unknown",
        registry: CollectorRegistry | None = None,
        environment: str = "development",
        service_name: str = "asgi-service",
        cache_ttl: float = 1.0,
        startup_checks: ChecksArg | None = None,
    ) -> None:
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)) or cache_ttl < 0:
            msg = f"cache_ttl must be a number of seconds >= 0, got {cache_ttl!r}"
            raise ValueError(msg)
        self.checks = _normalize(checks, what="checks")
        self._by_name = {check.name: check for check in self.checks}
        metrics = health_metrics(REGISTRY if registry is None else registry)
        self._readiness = Evaluator(self.checks, cache_ttl=cache_ttl, metrics=metrics)
        if startup_checks is None:
            self._startup: Evaluator | None = None
            self._startup_by_name = self._by_name
        else:
            explicit = _normalize(startup_checks, what="startup_checks")
            self._startup = Evaluator(explicit, cache_ttl=cache_ttl)
            self._startup_by_name = {check.name: check for check in explicit}
        self._started = False
        self._info = ServiceInfo(
            version=str(version),
            environment=str(environment),
            service_name=str(service_name),
            instance=socket.gethostname(),
        )
        self._started_at = time.monotonic()
        self._started_iso = iso_utc()
        self._live_prefix = b'{"status":"live","timestamp":"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await complete_lifespan(receive, send, on_shutdown=self.aclose)
        elif kind == "websocket":
            # No websocket endpoint here: closing before accept is answered with a 403.
            await receive()
            await send({"type": "websocket.close", "code": 1000})

    async def aclose(self) -> None:
        """Release what the checks keep between runs (the HTTP check's client).

        Called when this app's lifespan shuts down, and by `instrument()`'s shutdown for
        the health app it mounts; call it yourself when you mount the app elsewhere. A
        later probe simply makes what it needs again. A failing close is logged.
        """
        closes = {
            id(check.close): check.close
            for check in (*self._by_name.values(), *self._startup_by_name.values())
            if check.close is not None
        }
        for close in closes.values():
            try:
                await close()
            except Exception:
                logger.warning("asgi_observe: closing a health check failed", exc_info=True)

    # --- HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, send: Send) -> None:
        sub = _SUBPATHS.get(relative_path(scope))
        if sub is None:
            await _respond(
                send, scope, 404, {"detail": "Not Found"}, media_type=b"application/json"
            )
            return
        if "litestar_app" not in scope:
            # Litestar labels a mount by its own path_template and warns on every request
            # when a mounted app writes to its scope, so the sub-route is left out there.
            scope[SUBROUTE_SCOPE_KEY] = sub
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(
                send,
                scope,
                405,
                {"detail": "Method Not Allowed"},
                media_type=b"application/json",
                extra_headers=[(b"allow", _ALLOW)],
            )
            return
        health_json = _wants_health_json(scope)
        if sub == "/live" and not health_json:
            await self._live(scope, send)
            return
        try:
            status, body = await self._answer(sub, health_json=health_json)
        except Exception:
            # Our own bug: never a traceback into the server, never a hanging probe.
            logger.exception("asgi_observe: the health endpoint %r failed", sub)
            status, body = 503, {"status": "error", "timestamp": iso_utc()}
        media_type = _HEALTH_JSON if health_json else b"application/json"
        await _respond(send, scope, status, body, media_type=media_type)

    async def _live(self, scope: Scope, send: Send) -> None:
        body = self._live_prefix + iso_utc().encode() + b'"}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _content_headers(b"application/json", len(body)),
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    async def _answer(self, sub: str, *, health_json: bool) -> tuple[int, dict[str, Any]]:
        if sub == "/ready":
            return self._ready(await self._readiness.evaluate(), health_json=health_json)
        if sub == "/startup":
            return await self._startup_answer(health_json=health_json)
        if sub == "/live":  # only the health+json variant gets here
            return 200, self._health_json(status="pass", description="liveness")
        return 200, self._legacy(health_json=health_json)

    def _health_json(self, **kwargs: Any) -> dict[str, Any]:
        return render_health_json(self._info, **kwargs)

    def _ready(self, report: Report, *, health_json: bool) -> tuple[int, dict[str, Any]]:
        ok = report.ok
        if ok and self._startup is None:
            self._started = True  # the default startup checks are the critical readiness ones
        status = 200 if ok else 503
        if health_json:
            return status, self._health_json(
                status=report.status,
                description="readiness",
                report=report,
                checks=self._by_name,
            )
        return status, {
            "status": "ready" if ok else "not_ready",
            "timestamp": iso_utc(),
            "version": self._info.version,
            "checks": plain_checks(report),
        }

    async def _startup_answer(self, *, health_json: bool) -> tuple[int, dict[str, Any]]:
        report: Report | None = None
        if not self._started:
            evaluator = self._startup or self._readiness
            report = await evaluator.evaluate()
            if report.ok:
                self._started = True
        status = 200 if self._started else 503
        if health_json:
            return status, self._health_json(
                status=("pass" if self._started else "fail"),
                description="startup",
                report=report,
                checks=self._startup_by_name,
            )
        body: dict[str, Any] = {
            "status": "started" if self._started else "starting",
            "timestamp": iso_utc(),
            "version": self._info.version,
        }
        if report is not None:
            body["checks"] = plain_checks(report)
        return status, body

    def _legacy(self, *, health_json: bool) -> dict[str, Any]:
        uptime = round(time.monotonic() - self._started_at, 3)
        info = self._info
        if health_json:
            return self._health_json(
                status="pass",
                description=f"{info.service_name} ({info.environment})",
                extra_checks={
                    "uptime": [
                        {
                            "componentType": "system",
                            "observedValue": uptime,
                            "observedUnit": "s",
                            "status": "pass",
                            "time": iso_utc(),
                        }
                    ]
                },
            )
        return {
            "status": "healthy",
            "timestamp": iso_utc(),
            "version": info.version,
            "environment": info.environment,
            "uptime_seconds": uptime,
            "service": {
                "name": info.service_name,
                "version": info.version,
                "environment": info.environment,
                "instance": info.instance,
                "started_at": self._started_iso,
            },
        }


def _wants_health_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"accept" and _HEALTH_JSON in value.lower():
            return True
    return False


async def _respond(
    send: Send,
    scope: Scope,
    status: int,
    body: Mapping[str, Any],
    *,
    media_type: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await respond(
        send,
        status,
        dumps(body),
        media_type.decode("latin-1"),
        [(b"cache-control", b"no-store"), *(extra_headers or ())],
        head=scope.get("method") == "HEAD",
    )
