"""The reference service: a FastAPI backend shaped like BaliBlissed, fully observed.

Run it with ``make run`` or ``uvicorn --factory examples.baliblissed:create_app``.

What it shows, end to end:

- destinations read from a database (SQLite file by default, PostgreSQL through
  ``DATABASE_URL``) behind a cache (in memory, or Redis through ``REDIS_URL``) that counts
  its hits and misses;
- itineraries from a simulated AI model (local and deterministic, no network) with token
  counts, behind a circuit breaker; ``BALIBLISSED_AI_FAILURE=true`` makes every call fail
  so the breaker opens;
- a per-client rate limit answering 429;
- readiness checks for the database, Redis (when configured) and the disk;
- the HTTP, health-check and ``baliblissed_*`` application and system metrics, JSON logs
  in production and traces exported when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
- ``GET /``, an index of every endpoint above (the first URL ``make run`` prints).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from asgi_observe import (
    HealthApp,
    Settings,
    add_span_attributes,
    checks,
    configure_logging,
    get_logger,
    instrument,
    record_exception,
    tracer,
)
from asgi_observe.health import Check
from asgi_observe.metrics.app import AppMetrics, CircuitState
from asgi_observe.metrics.system import register_system_metrics
from asgi_observe.types import ASGIApp

NAMESPACE = "baliblissed"

logger = get_logger(__name__)

DESTINATIONS = {
    "ubud": ("Ubud", "Rice terraces, temples and the monkey forest."),
    "canggu": ("Canggu", "Surf breaks, cafés and sunsets."),
    "uluwatu": ("Uluwatu", "Cliff-top temple and the Kecak fire dance."),
    "nusa-penida": ("Nusa Penida", "Kelingking beach and manta rays."),
    "sidemen": ("Sidemen", "A quiet valley under Mount Agung."),
}


def database_url(settings: Settings) -> str:
    """SQLAlchemy URL: ``DATABASE_URL`` (asyncpg for PostgreSQL) or a local SQLite file."""
    url = settings.database_url
    if url is None:
        return f"sqlite+aiosqlite:///{os.path.join(tempfile.gettempdir(), 'baliblissed.sqlite3')}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


class Cache:
    """A small TTL cache, in memory or in Redis, that reports hits and misses."""

    def __init__(self, metrics: AppMetrics, redis_client: Any = None, ttl: float = 60.0) -> None:
        self._metrics = metrics
        self._redis = redis_client
        self._ttl = ttl
        self._local: dict[str, tuple[float, str]] = {}

    async def get(self, key: str) -> str | None:
        value: str | None
        if self._redis is not None:
            raw = await self._redis.get(f"{NAMESPACE}:{key}")
            value = raw.decode() if isinstance(raw, bytes) else raw
        else:
            entry = self._local.get(key)
            value = entry[1] if entry and entry[0] > time.monotonic() else None
        if value is None:
            self._metrics.cache_miss()
        else:
            self._metrics.cache_hit()
        return value

    async def set(self, key: str, value: str) -> None:
        if self._redis is not None:
            await self._redis.set(f"{NAMESPACE}:{key}", value, ex=int(self._ttl))
        else:
            self._local[key] = (time.monotonic() + self._ttl, value)


class CircuitOpenError(Exception):
    """Calls are refused while the breaker is open."""


@dataclass
class CircuitBreaker:
    """Closed → open after `threshold` failures; half-open after `reset_after` seconds."""

    name: str
    metrics: AppMetrics
    threshold: int = 3
    reset_after: float = 30.0
    failures: int = 0
    opened_at: float = 0.0
    state: CircuitState = CircuitState.CLOSED

    def __post_init__(self) -> None:
        self.metrics.set_circuit_state(self.name, self.state)

    def _move(self, state: CircuitState) -> None:
        self.state = state
        self.metrics.set_circuit_state(self.name, state)

    def before_call(self) -> None:
        if self.state is CircuitState.OPEN:
            if time.monotonic() - self.opened_at < self.reset_after:
                raise CircuitOpenError(self.name)
            self._move(CircuitState.HALF_OPEN)

    def succeeded(self) -> None:
        self.failures = 0
        if self.state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED)

    def failed(self) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            self._move(CircuitState.OPEN)


class AIUnavailableError(Exception):
    """The simulated model failed (``BALIBLISSED_AI_FAILURE=true``)."""


@dataclass
class SimulatedAI:
    """A deterministic stand-in for an LLM: same prompt, same answer and token count."""

    fail: bool = False
    latency: float = 0.005

    async def complete(self, prompt: str) -> tuple[str, int]:
        await asyncio.sleep(self.latency)
        if self.fail:
            raise AIUnavailableError("the itinerary model is unavailable")
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        tokens = len(prompt.split()) * 3 + int(digest[:2], 16) % 50
        return f"Plan {digest[:8]}: {prompt}", tokens


@dataclass
class RateLimiter:
    """A fixed-window limit per client address."""

    limit: int = 20
    window: float = 60.0
    hits: dict[str, tuple[float, int]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        started, count = self.hits.get(key, (now, 0))
        if now - started >= self.window:
            started, count = now, 0
        self.hits[key] = (started, count + 1)
        if len(self.hits) > 10_000:  # bounded memory under a flood of addresses
            self.hits.clear()
        return count < self.limit


class ItineraryRequest(BaseModel):
    destination: str = Field(min_length=1, max_length=64)
    days: int = Field(ge=1, le=30)


@dataclass
class ItineraryPlanner:
    """Rate limit → circuit breaker → model call, each step measured and logged."""

    metrics: AppMetrics
    breaker: CircuitBreaker
    model: SimulatedAI
    limiter: RateLimiter

    async def plan(self, body: ItineraryRequest, client: str) -> dict[str, Any]:
        if not self.limiter.allow(client):
            self.metrics.rate_limit_hit("/itineraries")
            logger.warning("rate limit exceeded", endpoint="/itineraries")
            raise HTTPException(
                status_code=429, detail="rate limit exceeded", headers={"Retry-After": "60"}
            )
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            raise HTTPException(
                status_code=503, detail="itinerary model unavailable (circuit open)"
            ) from None
        with tracer.start_as_current_span("ai.generate_itinerary") as span:
            span.set_attribute("ai.request_type", "itinerary")
            try:
                with self.metrics.track_ai("itinerary") as call:
                    plan, tokens = await self.model.complete(
                        f"{body.days} days in {body.destination}"
                    )
                    call.tokens(tokens)
            except AIUnavailableError as exc:
                record_exception(exc)
                self.breaker.failed()
                logger.warning(
                    "itinerary model failed", breaker_state=self.breaker.state.name.lower()
                )
                raise HTTPException(status_code=503, detail="itinerary model unavailable") from None
            add_span_attributes(ai_tokens=tokens, destination=body.destination)
        self.breaker.succeeded()
        logger.info(
            "itinerary generated", destination=body.destination, days=body.days, tokens=tokens
        )
        return {"destination": body.destination, "days": body.days, "plan": plan, "tokens": tokens}


def build_api(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    engine: AsyncEngine | None = None,
    redis_client: Any = None,
    ai_failure: bool = False,
    rate_limit: int = 20,
) -> FastAPI:
    """The FastAPI app with its dependencies; `create_app` wraps it in the stack."""
    settings = Settings() if settings is None else settings
    registry = REGISTRY if registry is None else registry
    metrics = AppMetrics(NAMESPACE, registry=registry)
    engine = create_async_engine(database_url(settings)) if engine is None else engine
    cache = Cache(metrics, redis_client)
    breaker = CircuitBreaker("ai_circuit_breaker", metrics)
    planner = ItineraryPlanner(
        metrics, breaker, SimulatedAI(fail=ai_failure), RateLimiter(limit=rate_limit)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS destinations (slug VARCHAR(64) PRIMARY KEY, name VARCHAR(128), summary TEXT)"
                )
            )
            existing = {
                row[0] for row in await connection.execute(text("SELECT slug FROM destinations"))
            }
            for slug, (name, summary) in DESTINATIONS.items():
                if slug not in existing:
                    await connection.execute(
                        text(
                            "INSERT INTO destinations (slug, name, summary) VALUES (:slug, :name, :summary)"
                        ),
                        {"slug": slug, "name": name, "summary": summary},
                    )
        yield
        await engine.dispose()

    api = FastAPI(
        title="BaliBlissed",
        version=settings.service_version or "1.0.0",
        lifespan=lifespan,
        # asgi_observe makes the server span and the HTTP metrics; FastAPI's own
        # OpenTelemetry request spans and metrics would repeat them.
        telemetry={"tracing": False, "metrics": False},
    )
    api.state.engine = engine
    api.state.breaker = breaker

    @api.get("/", include_in_schema=False)
    async def index(request: Request) -> dict[str, Any]:
        """What this service serves, so the first URL `make run` prints answers 200."""
        return {
            "service": settings.service_name,
            "version": api.version,
            "endpoints": service_index(api, settings, request.scope.get("root_path", "")),
        }

    @api.get("/destinations", summary="Every destination, from the database")
    async def list_destinations() -> list[dict[str, str]]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT slug, name FROM destinations ORDER BY slug")
            )
            return [{"slug": slug, "name": name} for slug, name in rows]

    @api.get("/destinations/{slug}", summary="One destination, through the cache")
    async def destination(slug: str) -> dict[str, str]:
        cached = await cache.get(f"destination:{slug}")
        if cached is not None:
            name, _, summary = cached.partition("|")
            return {"slug": slug, "name": name, "summary": summary}
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT name, summary FROM destinations WHERE slug = :slug"),
                    {"slug": slug},
                )
            ).first()
        if row is None:
            raise HTTPException(status_code=404, detail="unknown destination")
        await cache.set(f"destination:{slug}", f"{row[0]}|{row[1]}")
        return {"slug": slug, "name": row[0], "summary": row[1]}

    @api.post(
        "/itineraries",
        status_code=201,
        summary='An itinerary from the simulated AI model: {"destination": "ubud", "days": 3}',
    )
    async def itinerary(body: ItineraryRequest, request: Request) -> dict[str, Any]:
        return await planner.plan(body, request.client.host if request.client else "unknown")

    return api


def service_index(api: FastAPI, settings: Settings, root_path: str = "") -> list[dict[str, str]]:
    """The endpoints of the instrumented service: the app's own routes, then what
    `instrument()` serves (metrics unless disabled or moved to the internal port, probes).

    Read from the router at request time, so the index cannot drift from the routes.
    """
    entries = [
        {"method": method, "path": root_path + route.path, "summary": route.summary or route.name}
        for route in api.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in sorted(route.methods or ())
    ]
    if api.docs_url:
        entries.append(
            {"method": "GET", "path": root_path + api.docs_url, "summary": "Interactive API docs"}
        )
    if api.openapi_url:
        entries.append(
            {"method": "GET", "path": root_path + api.openapi_url, "summary": "OpenAPI schema"}
        )
    if settings.enable_metrics and settings.metrics_internal_port is None:
        entries += [
            {"method": "GET", "path": f"{root_path}/metrics", "summary": "Prometheus metrics"},
            {
                "method": "GET",
                "path": f"{root_path}/metrics/legacy",
                "summary": "The metrics as a JSON snapshot",
            },
        ]
    entries += [
        {"method": "GET", "path": f"{root_path}/health{path}", "summary": summary}
        for path, summary in (
            ("", "Service information and status"),
            ("/live", "Liveness probe: touches no dependency"),
            ("/ready", "Readiness probe: database, Redis, disk"),
            ("/startup", "Startup probe"),
        )
    ]
    return entries


def build_health(
    settings: Settings, engine: AsyncEngine, redis_client: Any, registry: CollectorRegistry
) -> HealthApp:
    # A filling disk is worth a warning on the probe, not taking the pod out of service.
    probes: list[Check] = [checks.database(engine, timeout=2.0), checks.disk("/", critical=False)]
    if redis_client is not None:
        probes.append(checks.redis(redis_client, timeout=1.0))
    return HealthApp(
        probes,
        version=settings.service_version or "1.0.0",
        environment=settings.environment,
        service_name=settings.service_name,
        registry=registry,
    )


SERVICE_NAME = "baliblissed-backend"


def ai_failure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """The example's own switch, ``BALIBLISSED_AI_FAILURE=true``: every AI call fails."""
    value = (os.environ if environ is None else environ).get("BALIBLISSED_AI_FAILURE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    ai_failure: bool | None = None,
) -> ASGIApp:
    """The uvicorn factory: configuration comes from the environment."""
    settings = Settings.from_env() if settings is None else settings
    if settings.service_name == Settings().service_name:
        # The example's own service name, unless OTEL_SERVICE_NAME says otherwise.
        settings = dataclasses.replace(settings, service_name=SERVICE_NAME)
    registry = REGISTRY if registry is None else registry
    ai_failure = ai_failure_from_env() if ai_failure is None else ai_failure
    configure_logging(settings)
    redis_client = None
    if settings.redis_url:
        import redis.asyncio

        redis_client = redis.asyncio.from_url(settings.redis_url)
    engine = create_async_engine(database_url(settings), pool_pre_ping=True)
    api = build_api(
        settings, registry=registry, engine=engine, redis_client=redis_client, ai_failure=ai_failure
    )
    register_system_metrics(registry, namespace=NAMESPACE)
    health = build_health(settings, engine, redis_client, registry)
    logger.info(
        "baliblissed starting",
        environment=settings.environment,
        database=engine.url.render_as_string(hide_password=True),
        redis=settings.redis_url is not None,
        ai_failure=ai_failure,
    )
    return instrument(api, settings, health=health, registry=registry)
