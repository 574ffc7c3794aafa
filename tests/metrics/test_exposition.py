"""metrics_app: formats, compression, methods, lifespan and multiprocess aggregation."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from asgi_observe import metrics_app
from tests.support import drive_lifespan

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def counting_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("orders", "Orders placed", registry=registry).inc(3)
    return registry


async def get(path: str = "/metrics", method: str = "GET", **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=metrics_app(counting_registry()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, headers=headers)


async def test_prometheus_text_by_default() -> None:
    response = await get()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "orders_total 3.0" in response.text
    assert "# EOF" not in response.text


async def test_openmetrics_when_accept_asks_for_it() -> None:
    response = await get(accept=OPENMETRICS_ACCEPT)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "orders_total 3.0" in response.text


async def test_gzip_when_accepted_and_not_when_refused() -> None:
    transport = httpx.ASGITransport(app=metrics_app(counting_registry()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        raw = await client.send(
            client.build_request("GET", "/metrics", headers={"accept-encoding": "gzip"}),
            stream=True,
        )
        body = b"".join([chunk async for chunk in raw.aiter_raw()])
        assert raw.headers["content-encoding"] == "gzip"
        assert b"orders_total 3.0" in gzip.decompress(body)
        plain = await client.get("/metrics", headers={"accept-encoding": "gzip;q=0, identity"})
        assert "content-encoding" not in plain.headers
        assert "orders_total 3.0" in plain.text


async def test_head_has_headers_and_no_body() -> None:
    response = await get(method="HEAD")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(method: str) -> None:
    response = await get(method=method)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "accept",
    ["application/openmetrics-text;version=banana", "\x00\x01", ";;;,,,", "text/plain;version=9.x"],
)
async def test_malformed_accept_headers_still_get_metrics(accept: str) -> None:
    response = await get(accept=accept)
    assert response.status_code == 200
    assert "orders_total 3.0" in response.text


async def test_lifespan_is_completed() -> None:
    sent = await drive_lifespan(metrics_app(CollectorRegistry()))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_multiprocess_aggregates_the_files_of_every_worker(tmp_path: Path) -> None:
    """Two real worker processes write their counters; one scrape sums them."""
    script = (
        "from prometheus_client import Counter\n"
        "Counter('jobs', 'Jobs done').inc(int(__import__('sys').argv[1]))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for amount in ("2", "5"):
        subprocess.run([sys.executable, "-c", script, amount], env=env, check=True)
    app = metrics_app(multiprocess_dir=str(tmp_path))

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/metrics")).text

    text = asyncio.run(scrape())
    assert "jobs_total 7.0" in text
