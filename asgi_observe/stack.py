"""`instrument()`: the whole stack, in the order of the public contract.

request id (outermost) → tracing → metrics → access log → path dispatch (``/metrics``,
``/health``) → app. Every log line and span then carries the request id, the access log
carries trace and span ids, and metrics see the final status, including the status of
responses the stack itself generates.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry

from asgi_observe._asgi import relative_path
from asgi_observe._lifespan import Hook, LifespanHooks, StartupAbortedError
from asgi_observe.health.app import HealthApp
from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.http import LabelFunction, MetricsMiddleware
from asgi_observe.metrics.internal import InternalMetricsServer
from asgi_observe.metrics.legacy import legacy_metrics_app
from asgi_observe.pipeline import RequestPipeline
from asgi_observe.request_id import RequestIdMiddleware
from asgi_observe.routes import ROUTE_SCOPE_KEY, SUBROUTE_SCOPE_KEY, RouteResolver
from asgi_observe.settings import DEFAULT_EXCLUDED_URLS, Settings
from asgi_observe.tracing import TracingMiddleware, setup_tracing
from asgi_observe.tracing.setup import flush_tracing
from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "HEALTH_PATH",
    "LEGACY_METRICS_PATH",
    "METRICS_PATH",
    "ObservedApp",
    "PathDispatch",
    "instrument",
]

logger = logging.getLogger("asgi_observe")

METRICS_PATH = "/metrics"
LEGACY_METRICS_PATH = "/metrics/legacy"
HEALTH_PATH = "/health"


class PathDispatch:
    """Serve the stack's own endpoints in front of the app; everything else goes to the app.

    Exact paths are compared (no regex), so the cost for app requests is a dict lookup
    and a prefix test. The endpoints record their route template in the scope so
    metrics, spans and access logs label them like any route.
    """

    def __init__(
        self, app: ASGIApp, *, endpoints: Mapping[str, ASGIApp], health: ASGIApp | None
    ) -> None:
        self.app = app
        self._endpoints = dict(endpoints)
        self._health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = relative_path(scope)
            endpoint = self._endpoints.get(path)
            if endpoint is not None:
                scope[ROUTE_SCOPE_KEY] = path
                await endpoint(scope, receive, send)
                return
            if self._health is not None and (
                path == HEALTH_PATH or path.startswith(HEALTH_PATH + "/")
            ):
                await self._serve_health(self._health, path, scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve_health(
        health: ASGIApp, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Mount `health` at ``/health`` the way Starlette's ``Mount`` does (root_path).

        `path` is the request's path below ``root_path`` (`relative_path`, which accepts
        both server conventions). The child scope always follows the ASGI spec's:
        ``path`` is ``root_path`` + the rest, so the health app finds its sub-path with the
        same rule whether the server kept the prefix in ``path`` (uvicorn) or not
        (hypercorn ``--root-path`` behind a prefix-stripping proxy).
        """
        root = scope.get("root_path", "")
        child = dict(scope)
        child["root_path"] = root + HEALTH_PATH
        child["path"] = root + path

        async def send_naming_route(message: Message) -> None:
            # Named as the response starts: metrics record before the last body byte.
            if message["type"] == "http.response.start":
                sub = child.get(SUBROUTE_SCOPE_KEY)
                scope[ROUTE_SCOPE_KEY] = HEALTH_PATH + (sub if isinstance(sub, str) else "/{path}")
            await send(message)

        await health(child, receive, send_naming_route)


class ObservedApp:
    """The app returned by `instrument()`; keeps what was built so it can be inspected."""

    def __init__(
        self,
        stack: ASGIApp,
        *,
        app: ASGIApp,
        settings: Settings,
        registry: CollectorRegistry,
        tracer_provider: TracerProvider | Any,
        pipeline: ASGIApp | None = None,
    ) -> None:
        self.stack = stack
        # HTTP requests skip the lifespan layer, which only acts on lifespan scopes.
        self.pipeline = stack if pipeline is None else pipeline
        self.app = app
        self.settings = settings
        self.registry = registry
        self.tracer_provider = tracer_provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.pipeline(scope, receive, send)
        else:
            await self.stack(scope, receive, send)


def _starting_listener(server: InternalMetricsServer, *, shared: bool) -> Hook:
    """Start the internal metrics listener; a port that cannot be bound stops start-up.

    Under a multi-worker server (uvicorn ``--workers``, gunicorn) every worker tries to
    bind the port: the first one serves it, and a worker whose bind fails with
    EADDRINUSE because a *sibling worker* holds the port (`sibling_holds_port`) logs
    that once, at info, and serves on. Any other failure, a foreign process on the port
    included, stops start-up with a message naming ``METRICS_INTERNAL_PORT``. Without
    ``PROMETHEUS_MULTIPROC_DIR`` the serving worker's figures are its own only, which it
    says in one warning.
    """

    async def start_internal_metrics() -> None:
        # Process inspection (psutil) is needed only here, with an internal port set.
        from asgi_observe.metrics.workers import sibling_holds_port, worker_supervisor

        try:
            await server.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and await asyncio.to_thread(
                sibling_holds_port, server.port
            ):
                logger.info(
                    "asgi_observe: another worker of this server serves the internal metrics "
                    "port %s:%d (METRICS_INTERNAL_PORT); this worker serves the app only",
                    server.host,
                    server.port,
                )
                return
            msg = f"METRICS_INTERNAL_PORT: the internal metrics listener cannot start: {exc}"
            raise StartupAbortedError(msg) from exc
        if not shared:
            supervisor = await asyncio.to_thread(worker_supervisor)
            if supervisor is not None:
                logger.warning(
                    "asgi_observe: this worker (pid %d) serves the internal metrics port "
                    "%s:%d (METRICS_INTERNAL_PORT) for all %s workers, with its own figures "
                    "only; set PROMETHEUS_MULTIPROC_DIR to a directory shared by the workers "
                    "to serve figures aggregated across all of them",
                    os.getpid(),
                    server.host,
                    server.port,
                    supervisor,
                )

    return start_internal_metrics


def _metrics_routes(settings: Settings, registry: CollectorRegistry) -> dict[str, ASGIApp]:
    """``/metrics`` and ``/metrics/legacy``, behind the configured guards."""
    options: dict[str, Any] = {
        "token": settings.metrics_token,
        "allow": settings.metrics_allow,
        "trusted_proxies": settings.trusted_proxies,
        "multiprocess_dir": settings.prometheus_multiproc_dir,
    }
    return {
        METRICS_PATH: metrics_app(registry, **options),
        LEGACY_METRICS_PATH: legacy_metrics_app(
            registry, namespace=settings.metrics_namespace, **options
        ),
    }


_OPEN_METRICS_WARNING = (
    "asgi_observe: /metrics is open to anyone who can reach this app in production; "
    "restrict it with METRICS_TOKEN (a bearer token scrapers must send), METRICS_ALLOW "
    "(the CIDRs allowed to scrape) or METRICS_INTERNAL_PORT (a separate listener)"
)


def _warn_if_metrics_open(settings: Settings) -> None:
    """Say so, once per `instrument()` call, when production serves an unguarded /metrics.

    Metrics name routes, versions and traffic; an endpoint anyone can scrape is usually an
    oversight, but a guard elsewhere (a NetworkPolicy, an ingress rule) may exist, so
    this warns instead of refusing to start.
    """
    if (
        settings.is_production
        and settings.enable_metrics
        and settings.metrics_token is None
        and not settings.metrics_allow
        and settings.metrics_internal_port is None
    ):
        logger.warning(_OPEN_METRICS_WARNING)


def instrument(
    app: ASGIApp,
    settings: Settings | None = None,
    *,
    health: ASGIApp | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | Any = None,
    route_resolver: RouteResolver | None = None,
    labels: Mapping[str, LabelFunction] | None = None,
) -> ObservedApp:
    """Wrap `app` in the full observability stack.

    Args:
        app: any ASGI app (Starlette, FastAPI, Litestar, Django, hand-written).
        settings: the configuration (default: `Settings.from_env()`, read once here).
        health: an ASGI app (usually a `HealthApp`) mounted at ``/health``.
        registry: the Prometheus registry (default: prometheus-client's global one).
        tracer_provider: a provider to use instead of calling `setup_tracing(settings)`;
            the stack then leaves its flushing and shutdown to you.
        route_resolver: ``resolver(scope) -> template | None``, tried before the built-in
            route resolution by the metrics, the span name and the access log alike (for
            routers the library does not know; Django and Quart have integrations).
        labels: dynamic metric labels, name → ``function(scope) -> str | None``, on
            ``http_requests_total``, ``http_request_duration_seconds`` and
            ``http_requests_in_progress`` (see `MetricsMiddleware`): bounded to 100
            values each, refused at construction when they clash with a built-in label
            or name an unbounded value (``user_id``, ``email``...).

    Every other option is a `Settings` field with its variable: metric namespace,
    buckets, excluded paths and methods, constant labels, the request-id header, the
    access-log exclusions, header capture for spans.

    Logging is configured separately, by `configure_logging(settings)`, because it is
    process-wide and usually set up before the app is built.

    With ``METRICS_INTERNAL_PORT`` set, ``/metrics`` and ``/metrics/legacy`` are served on
    that port for the app's lifetime (started and stopped by the ASGI lifespan) and are
    404 on the public app; with ``ENABLE_METRICS=false`` there are no metrics at all. In
    production, a ``/metrics`` with none of ``METRICS_TOKEN``, ``METRICS_ALLOW`` and
    ``METRICS_INTERNAL_PORT`` set is served, with one warning on the ``asgi_observe``
    logger naming them.

    Raises:
        ValueError: if `app` is already instrumented, or the settings are invalid.
    """
    if isinstance(app, ObservedApp):
        msg = "this app is already instrumented: call instrument() once, on the innermost app"
        raise ValueError(msg)  # noqa: TRY004 - the value, not its type, is wrong
    settings = Settings.from_env() if settings is None else settings
    registry = REGISTRY if registry is None else registry
    _warn_if_metrics_open(settings)
    startup: list[Hook] = []
    shutdown: list[Hook] = []

    endpoints: dict[str, ASGIApp] = {}
    if settings.enable_metrics:
        routes = _metrics_routes(settings, registry)
        if settings.metrics_internal_port is None:
            endpoints.update(routes)
        else:
            internal = InternalMetricsServer(
                routes, host=settings.metrics_internal_host, port=settings.metrics_internal_port
            )
            startup.append(
                _starting_listener(internal, shared=settings.prometheus_multiproc_dir is not None)
            )
            shutdown.append(internal.stop)

    own_provider = tracer_provider is None
    provider = setup_tracing(settings) if own_provider else tracer_provider
    if own_provider:

        async def flush_spans() -> None:
            # Flushed, not shut down: the app may start again in this process (test
            # suites do), and the provider is shut down once, at exit. A black-holed
            # collector must not hold the shutdown: bounded, off the loop.
            await asyncio.to_thread(flush_tracing, provider)

        shutdown.append(flush_spans)
    if isinstance(health, HealthApp):  # mounted here, it never sees a lifespan of its own
        shutdown.append(health.aclose)

    dispatch = PathDispatch(app, endpoints=endpoints, health=health)
    access = AccessLogMiddleware(
        dispatch,
        trusted_proxies=settings.trusted_proxies,
        route_resolver=route_resolver,
        exclude_paths=settings.access_log_exclude_paths,
    )
    stack: ASGIApp = access
    metrics: MetricsMiddleware | None = None
    if settings.enable_metrics:
        stack = metrics = MetricsMiddleware(
            stack,
            registry=registry,
            namespace=settings.metrics_namespace,
            buckets=settings.metrics_buckets,
            exclude_paths=settings.metrics_exclude_paths,
            route_resolver=route_resolver,
            multiprocess=settings.prometheus_multiproc_dir is not None,
            exclude_methods=settings.metrics_exclude_methods,
            labels=labels,
            const_labels=settings.metrics_labels,
            instrumentator_compat=settings.metrics_instrumentator_compat,
        )
    tracing: TracingMiddleware | None = None
    if not settings.sdk_disabled:  # OTEL_SDK_DISABLED: no spans, nothing else changes
        # The built-in exclusions are exact paths (``/healthcare`` stays traced); patterns
        # set through OTEL_PYTHON_*EXCLUDED_URLS keep opentelemetry-util-http's meaning.
        default_exclusions = settings.excluded_urls == DEFAULT_EXCLUDED_URLS
        stack = tracing = TracingMiddleware(
            stack,
            tracer_provider=provider,
            excluded_urls=None if default_exclusions else settings.excluded_urls,
            excluded_paths=DEFAULT_EXCLUDED_URLS if default_exclusions else (),
            trusted_proxies=settings.trusted_proxies,
            route_resolver=route_resolver,
            http_capture_headers_server_request=settings.http_capture_headers_server_request,
            http_capture_headers_server_response=settings.http_capture_headers_server_response,
            http_capture_headers_sanitize_fields=settings.http_capture_headers_sanitize_fields,
        )
    request_id = RequestIdMiddleware(stack, header_name=settings.request_id_header)
    pipeline = RequestPipeline(
        request_id,
        # The requests it takes never reach the stack's own endpoints (own_paths,
        # own_prefix): it hands them to the app directly, not through the dispatch.
        app=app,
        request_id=request_id,
        tracing=tracing,
        metrics=metrics,
        access=access,
        own_paths=frozenset(endpoints),
        own_prefix=HEALTH_PATH if health is not None else None,
    )
    return ObservedApp(
        LifespanHooks(pipeline, startup=startup, shutdown=shutdown),
        app=app,
        settings=settings,
        registry=registry,
        tracer_provider=provider,
        pipeline=pipeline,
    )
