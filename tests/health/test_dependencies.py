"""The database and Redis checks against a real PostgreSQL and Redis (REAL_PARTS.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine

from asgi_observe.health import HealthApp, checks
from asgi_observe.health._check import run_check
from tests.support import (
    PostgresServer,
    RedisServer,
    black_hole,
    refused_port,
    run_postgres,
    run_redis,
)

pytestmark = pytest.mark.realparts

MARGIN = 0.35  # scheduling slack on a shared 2-core machine
WRONG_PASSWORD = "Wr0ng-Passw0rd-7f3a"


def dsn_for(port: int, secret: str = "postgres") -> str:  # noqa: S107 - the test server's
    return f"postgresql://postgres:{secret}@127.0.0.1:{port}/postgres"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


# --- Redis ------------------------------------------------------------------------------


async def test_redis_healthy(redis_client: aioredis.Redis, registry: CollectorRegistry) -> None:
    app = HealthApp({"redis": checks.redis(redis_client)}, registry=registry)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        response = await http.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["redis"]["status"] == "pass"
    assert registry.get_sample_value("health_check_status", {"check": "redis"}) == 1


async def test_redis_stopped_fails_within_the_timeout() -> None:
    with run_redis() as server:
        client = aioredis.from_url(server.url)
        try:
            check = checks.redis(client, timeout=1.0)
            assert (await run_check(check)).status == "pass"
            server.stop()
            start = time.perf_counter()
            result = await run_check(check)
            elapsed = time.perf_counter() - start
        finally:
            await client.aclose()
    assert result.status == "fail"
    assert result.message is not None
    assert "Error" in result.message
    assert elapsed < 1.0 + MARGIN


async def test_redis_black_hole_fails_at_the_timeout() -> None:
    with black_hole() as port:
        client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            start = time.perf_counter()
            result = await run_check(checks.redis(client, timeout=0.4))
            elapsed = time.perf_counter() - start
        finally:
            await client.aclose()
    assert result.status == "fail"
    assert result.message == "TimeoutError: no answer within 0.4s"
    assert 0.4 <= elapsed < 0.4 + MARGIN


async def test_redis_refused_port_fails_fast() -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{refused_port()}/0")
    try:
        start = time.perf_counter()
        result = await run_check(checks.redis(client, timeout=1.0))
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("ConnectionError")
    assert elapsed < 0.5


async def test_redis_wrong_password_fails_without_revealing_it() -> None:
    with run_redis() as server:
        admin = aioredis.from_url(server.url)
        try:
            await admin.config_set("requirepass", "the-right-one")
        finally:
            await admin.aclose()
        client = aioredis.from_url(f"redis://:{WRONG_PASSWORD}@127.0.0.1:{server.port}/0")
        try:
            result = await run_check(checks.redis(client))
        finally:
            await client.aclose()
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("AuthenticationError")
    assert WRONG_PASSWORD not in result.message


# --- PostgreSQL ---------------------------------------------------------------------------


async def test_asyncpg_pool_healthy(postgres_server: PostgresServer) -> None:
    pool = await asyncpg.create_pool(postgres_server.dsn, min_size=0, max_size=2)
    try:
        result = await run_check(checks.database(pool))
    finally:
        await pool.close()
    assert result.status == "pass"
    assert result.name == "database"


async def test_asyncpg_connection_healthy(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        result = await run_check(checks.database(conn, name="primary"))
    finally:
        await conn.close()
    assert result.status == "pass"
    assert result.name == "primary"


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_sqlalchemy_async_engine_healthy(
    postgres_server: PostgresServer, driver: str
) -> None:
    url = postgres_server.dsn.replace("postgresql://", f"postgresql+{driver}://")
    engine = create_async_engine(url)
    try:
        result = await run_check(checks.database(engine))
    finally:
        await engine.dispose()
    assert result.status == "pass"


async def test_psycopg_async_connection_healthy(postgres_server: PostgresServer) -> None:
    conn = await psycopg.AsyncConnection.connect(postgres_server.dsn)
    try:
        result = await run_check(checks.database(conn))
    finally:
        await conn.close()
    assert result.status == "pass"


async def test_asyncpg_wrong_password_fails_with_a_clear_message(
    postgres_server: PostgresServer,
) -> None:
    pool = await asyncpg.create_pool(
        dsn_for(postgres_server.port, WRONG_PASSWORD), min_size=0, max_size=1
    )
    try:
        result = await run_check(checks.database(pool))
    finally:
        await pool.close()
    assert result.status == "fail"
    assert result.message is not None
    assert result.message.startswith("InvalidPasswordError")
    assert "password authentication failed" in result.message
    assert WRONG_PASSWORD not in result.message


async def test_sqlalchemy_wrong_password_reports_no_secret(
    postgres_server: PostgresServer,
) -> None:
    url = dsn_for(postgres_server.port, WRONG_PASSWORD).replace(
        "postgresql://", "postgresql+asyncpg://"
    )
    engine = create_async_engine(url)
    try:
        result = await run_check(checks.database(engine))
    finally:
        await engine.dispose()
    assert result.status == "fail"
    assert result.message is not None
    assert "password authentication failed" in result.message
    assert WRONG_PASSWORD not in result.message


async def test_database_stopped_fails_within_the_timeout() -> None:
    """A PostgreSQL of its own, stopped under a live engine and pool: fail, not hang."""
    with run_postgres() as server:
        engine = create_async_engine(
            dsn_for(server.port).replace("postgresql://", "postgresql+asyncpg://")
        )
        pool = await asyncpg.create_pool(dsn_for(server.port), min_size=1, max_size=2)
        try:
            engine_check = checks.database(engine, timeout=2.0, name="engine")
            pool_check = checks.database(pool, timeout=2.0, name="pool")
            assert (await run_check(engine_check)).status == "pass"
            assert (await run_check(pool_check)).status == "pass"
            server.stop()
            start = time.perf_counter()
            results = [await run_check(engine_check), await run_check(pool_check)]
            elapsed = time.perf_counter() - start
        finally:
            pool.terminate()
            await engine.dispose()
    assert [r.status for r in results] == ["fail", "fail"]
    assert all(r.message and "postgres:postgres@" not in r.message for r in results)
    assert elapsed < 2 * (2.0 + MARGIN)


async def test_database_black_hole_fails_at_the_timeout() -> None:
    with black_hole() as port:
        pool = await asyncpg.create_pool(dsn_for(port), min_size=0, max_size=1)
        engine = create_async_engine(
            dsn_for(port).replace("postgresql://", "postgresql+asyncpg://")
        )
        try:
            start = time.perf_counter()
            app = HealthApp(
                {
                    "pool": checks.database(pool, timeout=0.4),
                    "engine": checks.database(engine, timeout=0.5),
                },
                registry=CollectorRegistry(),
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as http:
                response = await http.get("/ready")
            elapsed = time.perf_counter() - start
        finally:
            await engine.dispose()
            pool.terminate()
    assert response.status_code == 503
    body = response.json()["checks"]
    assert body["pool"] == {
        "status": "fail",
        "response_ms": body["pool"]["response_ms"],
        "message": "TimeoutError: no answer within 0.4s",
    }
    assert body["engine"]["message"] == "TimeoutError: no answer within 0.5s"
    assert 0.5 <= elapsed < 0.5 + MARGIN  # concurrent: the largest timeout, not the sum


async def test_database_refused_port_fails_fast() -> None:
    pool = await asyncpg.create_pool(dsn_for(refused_port()), min_size=0, max_size=1)
    try:
        start = time.perf_counter()
        result = await run_check(checks.database(pool))
        elapsed = time.perf_counter() - start
    finally:
        await pool.close()
    assert result.status == "fail"
    assert result.message is not None
    assert "Connect" in result.message or "refused" in result.message
    assert elapsed < 1.0


async def test_database_and_redis_ready_together(
    postgres_server: PostgresServer, redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    pool = await asyncpg.create_pool(postgres_server.dsn, min_size=0, max_size=2)
    try:
        app = HealthApp(
            {
                "database": checks.database(pool),
                "redis": checks.redis(redis_client),
                "disk": checks.disk("/", warn_percent=99.8, fail_percent=99.9),
            },
            version="1.0.0",
            registry=registry,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            response = await http.get("/ready")
    finally:
        await pool.close()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {name: c["status"] for name, c in body["checks"].items()} == {
        "database": "pass",
        "redis": "pass",
        "disk": "pass",
    }
    for name in ("database", "redis", "disk"):
        assert registry.get_sample_value("health_check_status", {"check": name}) == 1
