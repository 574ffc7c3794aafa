"""The reference service end to end: a real uvicorn process, real PostgreSQL, Redis and Prometheus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from asgi_observe import Settings
from examples.baliblissed import build_api, create_app
from tests.logs.support import restore_logging
from tests.metrics.helpers import value
from tests.support import (
    PostgresServer,
    RedisServer,
    free_port,
    http_get,
    run_prometheus,
    wait_until,
)

pytestmark = pytest.mark.realparts
__all__ = ["restore_logging"]  # fixture used below

ROOT = Path(__file__).resolve().parents[2]

SEED_FAMILIES = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_size_bytes_bucket",
    "http_response_size_bytes_bucket",
    "http_requests_in_progress",
    "baliblissed_cache_hits_total",
    "baliblissed_cache_misses_total",
    "baliblissed_ai_requests_total",
    "baliblissed_ai_request_duration_seconds_bucket",
    "baliblissed_ai_tokens_used_total",
    "baliblissed_circuit_breaker_state",
    "baliblissed_rate_limit_hits_total",
    "baliblissed_system_cpu_percent",
    "baliblissed_system_memory_percent",
    "baliblissed_system_disk_percent",
    "health_check_status",
)


def _uvicorn(env: dict[str, str], stdout: Path) -> Iterator[str]:
    port = free_port()
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "examples.baliblissed:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: process.poll() is not None or _live(url),
                timeout=30,
                what="the example to start",
            )
            assert process.poll() is None, stdout.read_text()
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _live(url: str) -> bool:
    try:
        return http_get(f"{url}/health/live", timeout=1)[0] == 200
    except OSError:
        return False


def test_reference_service_on_postgres_and_redis(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": postgres_server.dsn,
        "REDIS_URL": redis_server.url,
        "OTEL_SERVICE_NAME": "baliblissed-backend",
    }
    log_file = tmp_path / "stdout.log"
    served = _uvicorn(env, log_file)
    url = next(served)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/destinations/ubud").status_code == 200  # miss
            assert client.get("/destinations/ubud").status_code == 200  # hit
            assert client.get("/destinations/atlantis?email=guest@example.com").status_code == 404
            statuses = [
                client.post("/itineraries", json={"destination": "ubud", "days": 3}).status_code
                for _ in range(21)
            ]
            assert statuses[:20] == [201] * 20
            assert statuses[20] == 429
            ready = client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            statuses_by_check = {
                name: check["status"] for name, check in ready.json()["checks"].items()
            }
            assert statuses_by_check.pop("disk") in ("pass", "warn")  # the host's disk decides
            assert statuses_by_check == {"database": "pass", "redis": "pass"}
            with run_prometheus([url.removeprefix("http://")]) as prometheus:
                prometheus.wait_for('baliblissed_rate_limit_hits_total{endpoint="/itineraries"}')
                missing = [family for family in SEED_FAMILIES if not prometheus.vector(family)]
                assert missing == []
                hits = prometheus.vector("baliblissed_cache_hits_total")
                assert float(hits[0]["value"][1]) >= 1
    finally:
        next(served, None)
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    non_json = [
        line for line in log_file.read_text().splitlines() if line and not line.startswith("{")
    ]
    assert non_json == []
    access = [line for line in lines if line.get("logger") == "asgi_observe.access"]
    assert {line["route"] for line in access} >= {"/destinations/{slug}", "/itineraries"}
    assert all(len(line["request_id"]) >= 16 and len(line["trace_id"]) == 32 for line in access)
    assert "guest@example.com" not in log_file.read_text()
    generated = [line for line in lines if line.get("event") == "itinerary generated"]
    assert len(generated) == 20
    assert all(line["trace_id"] and line["request_id"] for line in generated)
    assert any(line.get("event") == "rate limit exceeded" for line in lines)


async def test_ai_failures_open_the_circuit_breaker(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bb.sqlite3'}")
    api = build_api(settings, registry=registry, ai_failure=True)
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        statuses = [
            (await client.post("/itineraries", json={"destination": "ubud", "days": 2})).status_code
            for _ in range(4)
        ]
    assert statuses == [503, 503, 503, 503]
    assert (
        value(registry, "baliblissed_circuit_breaker_state", breaker_name="ai_circuit_breaker") == 1
    )
    # Three calls reached the model and failed; the fourth was refused by the open breaker.
    assert value(registry, "baliblissed_ai_requests_total", request_type="itinerary") == 3


async def test_default_factory_needs_nothing_and_is_ready(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp())
    registry = CollectorRegistry()
    app = create_app(Settings(), registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # ASGITransport sends no lifespan: the readiness check still reaches SQLite.
        ready = await client.get("/health/ready")
        legacy = await client.get("/metrics/legacy")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["status"] == "pass"
    assert app.settings.service_name == "baliblissed-backend"  # type: ignore[attr-defined]
    assert set(legacy.json()) >= {"timestamp", "api_metrics", "system_metrics"}
