"""Cost of the health probes in-process: liveness, and readiness cached or evaluated.

Liveness is compared with the smallest possible raw ASGI JSON answer and with a Starlette
route returning a JSONResponse, the usual hand-written probe. Readiness is measured with
one trivial async check, served from the cache and evaluated on every probe (``cache_ttl=0``),
which shows the fixed overhead of the concurrent, timed evaluation.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_observe.health import HealthApp
from asgi_observe.types import Receive, Scope, Send
from bench.harness import compare, make_scope, print_table

_BODY = b'{"status":"live","timestamp":"2025-01-01T12:00:00Z"}'


async def raw_live(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": _BODY})


async def starlette_live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "live", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ")})


async def database() -> bool:
    return True


def main() -> None:
    registry = CollectorRegistry()
    live = compare(
        {
            "raw ASGI JSON (baseline)": raw_live,
            "Starlette route + JSONResponse": Starlette(routes=[Route("/live", starlette_live)]),
            "HealthApp /live": HealthApp({"database": database}, registry=registry),
        },
        scope_factory=lambda: make_scope("/live"),
    )
    print_table("Liveness probe", live, baseline="raw ASGI JSON (baseline)")
    ready = compare(
        {
            "HealthApp /ready, cached (ttl 1 s)": HealthApp(
                {"database": database}, registry=registry, cache_ttl=1.0
            ),
            "HealthApp /ready, evaluated (ttl 0)": HealthApp(
                {"database": database}, registry=registry, cache_ttl=0
            ),
        },
        scope_factory=lambda: make_scope("/ready"),
    )
    print_table(
        "Readiness probe, one trivial check", ready, baseline="HealthApp /ready, cached (ttl 1 s)"
    )


if __name__ == "__main__":
    main()
