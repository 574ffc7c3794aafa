"""Fixtures shared by the whole suite: fresh registries, private tracer providers, real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tests.support import PostgresServer, RedisServer, run_postgres, run_redis


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test, so no test sees another's samples."""
    return CollectorRegistry()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Keeps the finished spans of the `provider` fixture, for the test to read."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """Never the global provider: each test gets its own, shut down afterwards.

    Default sampler (parent-based, always on): a sampled parent samples.
    """
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with run_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server
