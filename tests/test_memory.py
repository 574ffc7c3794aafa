"""Memory stays bounded in bytes when every request carries large, never-repeated values.

Per-process caches keyed by request data (memoised redactions of paths, hosts, user
agents and queries, route lookups) are bounded by entry count; an entry count alone is
no bound when each key is 8 KB. This drives the whole `instrument()` stack with unique
8 KB paths, hosts and user agents and checks the process does not keep them.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator

import httpx
import psutil
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, configure_logging, instrument
from asgi_observe.pii import is_sensitive_key
from tests.logs.support import restore_logging

__all__ = ["restore_logging"]  # a fixture used below

pytestmark = pytest.mark.slow

_SAMPLED_PARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
_REQUESTS = 4_000
_WARM_UP = 400
_MAX_GROWTH = 20 * 1024 * 1024


def _unique(size: int = 8192) -> str:
    """`size` random URL- and header-safe characters, never seen before.

    Hex digits only: random letters would now and then spell a sensitive name (``key``,
    ``token``) and turn a plain value into a redacted one, which is not what is measured.
    """
    return os.urandom(size // 2).hex()


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.fixture
def production_logs_discarded(
    restore_logging: None, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Access lines built and rendered as in production, then dropped.

    pytest keeps every log record of a test for its report; records of 8 KB URLs (the
    access log's, and httpx's own ``HTTP Request: ...`` line) would be the test's memory,
    not the library's. Records below ERROR are therefore not created; the access log
    still builds every field (and fills its memos) before its level is checked.
    """
    with open(os.devnull, "w") as sink:
        configure_logging(Settings(environment="production"), stream=sink)
        for name in ("httpx", "asgi_observe", "asgi_observe.access", ""):
            caplog.set_level(logging.ERROR, logger=name or None)
        yield


@pytest.mark.usefixtures("production_logs_discarded")
async def test_unique_8kb_paths_hosts_and_agents_do_not_grow_memory(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Starlette(routes=[Route("/hello", _hello)])
    observed = instrument(app, Settings(), registry=CollectorRegistry(), tracer_provider=provider)
    transport = httpx.ASGITransport(app=observed)

    async def send_unique(http: httpx.AsyncClient) -> None:
        response = await http.get(
            f"/{_unique()}",
            params={"q": _unique(2048)},
            headers={
                "host": _unique(),
                "user-agent": _unique(),
                "traceparent": _SAMPLED_PARENT,
            },
        )
        assert response.status_code == 404

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for _ in range(_WARM_UP):
            await send_unique(http)
        spans = exporter.get_finished_spans()
        assert len(spans) == _WARM_UP  # every request was traced with its attributes
        assert len(str((spans[-1].attributes or {})["user_agent.original"])) >= 8000
        exporter.clear()
        before = _rss()
        for done in range(1, _REQUESTS + 1):
            await send_unique(http)
            if done % 500 == 0:
                assert len(exporter.get_finished_spans()) == 500
                exporter.clear()
        after = _rss()
    growth = after - before
    assert growth < _MAX_GROWTH, f"RSS grew by {growth / 1e6:.1f} MB over {_REQUESTS} requests"


def test_unique_8kb_log_keys_do_not_grow_memory() -> None:
    """Log field names can come from user data (a JSON body logged as is)."""
    keys = [_unique() for _ in range(50)]
    for key in keys:
        is_sensitive_key(key)
    del keys
    before = _rss()
    for _ in range(_REQUESTS):
        assert not is_sensitive_key(_unique())
    growth = _rss() - before
    assert growth < _MAX_GROWTH, f"RSS grew by {growth / 1e6:.1f} MB over {_REQUESTS} keys"
