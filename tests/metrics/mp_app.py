"""A small multi-worker app for the multiprocess tests: ``uvicorn --factory`` target.

Run with ``PROMETHEUS_MULTIPROC_DIR`` set (the test does), e.g.
``uvicorn --workers 2 --factory tests.metrics.mp_app:create_app``.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe.metrics.app import AppMetrics, CircuitState
from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.http import MetricsMiddleware
from asgi_observe.metrics.legacy import legacy_metrics_app
from asgi_observe.metrics.system import register_system_metrics
from asgi_observe.types import ASGIApp, Receive, Scope, Send


def create_app() -> ASGIApp:
    """Starlette behind `MetricsMiddleware(multiprocess=True)`, metrics from every worker."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    registry = CollectorRegistry()
    register_system_metrics(registry, namespace="mp")
    app_metrics = AppMetrics("mp", registry=registry)
    app_metrics.set_circuit_state("upstream", CircuitState.OPEN)

    async def hello(request: Request) -> PlainTextResponse:
        app_metrics.cache_hit()
        return PlainTextResponse(str(os.getpid()))

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    starlette = Starlette(routes=[Route("/hello", hello), Route("/ping", ping)])
    endpoints = {
        "/metrics": metrics_app(registry, multiprocess_dir=directory),
        "/metrics/legacy": legacy_metrics_app(registry, multiprocess_dir=directory),
    }

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = endpoints.get(scope.get("path", "")) if scope["type"] == "http" else None
        await (endpoint or starlette)(scope, receive, send)

    return MetricsMiddleware(dispatch, registry=registry, multiprocess=True)
