"""Every example factory under a real uvicorn: its routes answer and are measured."""

from __future__ import annotations

import importlib

import pytest
from prometheus_client import REGISTRY

from asgi_observe import Settings
from tests.support import http_get, run_uvicorn


@pytest.mark.parametrize(
    ("module", "path", "handler"),
    [
        ("examples.raw_asgi", "/orders/17", "/orders/{order_id}"),
        ("examples.starlette_app", "/api/v2/bookings/5", "/api/{version}/bookings/{booking_id}"),
        ("examples.fastapi_app", "/api/v1/guides/3", "/api/v1/guides/{guide_id}"),
        ("examples.litestar_app", "/villas/8", "/villas/{villa_id}"),
    ],
)
def test_example_factories_serve_and_are_measured(module: str, path: str, handler: str) -> None:
    factory = importlib.import_module(module).create_app
    before = (
        REGISTRY.get_sample_value(
            "http_requests_total", {"method": "GET", "status": "200", "handler": handler}
        )
        or 0
    )
    with run_uvicorn(factory(Settings())) as server:
        status, _, _ = http_get(server.url + path)
        assert status == 200
        status, _, body = http_get(server.url + "/metrics")
    assert status == 200
    assert f'handler="{handler}"' in body.decode()
    after = REGISTRY.get_sample_value(
        "http_requests_total", {"method": "GET", "status": "200", "handler": handler}
    )
    assert after == before + 1
