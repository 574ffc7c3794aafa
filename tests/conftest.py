"""Fixtures shared by the whole suite: fresh registries and the real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.support import PostgresServer, RedisServer, run_postgres, run_redis


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test, so no test sees another's samples."""
    return CollectorRegistry()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with run_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server
