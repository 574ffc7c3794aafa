"""Probes and metrics under ``--root-path /api`` with real uvicorn and hypercorn processes.

The two servers follow different conventions. uvicorn prepends its root path to every
request path (ASGI spec 2.x style: ``path`` includes ``root_path``), so a proxy in front
of it strips ``/api`` and sends ``/health/live``. hypercorn passes the request path as
it arrives and sets ``root_path`` beside it: behind a proxy that strips the prefix,
``path`` excludes ``root_path``; behind one that forwards it unchanged, ``path`` includes
it. Every case must answer ``/api/health/*`` and ``/api/metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.servers import free_port, serve, server_env, uvicorn_argv
from tests.support import http_get

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

PUBLIC = ("/health/live", "/health/ready", "/health/startup", "/metrics")


def check_endpoints(url: str, forwarded_prefix: str) -> None:
    """GET each public path the way the proxy forwards ``/api<path>``."""
    for path in PUBLIC:
        status, _, body = http_get(f"{url}{forwarded_prefix}{path}")
        assert status == 200, (forwarded_prefix + path, status, body[:200])
        if path.startswith("/health/"):
            assert json.loads(body)["status"] in ("live", "ready", "started"), body
        else:
            assert b"http_requests_total" in body
    assert http_get(f"{url}{forwarded_prefix}/ping")[0] == 200  # the app itself


def test_uvicorn_root_path(tmp_path: Path) -> None:
    port = free_port()
    argv = uvicorn_argv("tests.e2e.servers:observed_app", port, "--root-path", "/api")
    with serve(argv, port=port, env=server_env(), log=tmp_path / "uvicorn.log") as server:
        # uvicorn expects the prefix stripped: the proxy forwards /api/health/live as
        # /health/live and uvicorn puts /api back in front of it.
        check_endpoints(server.url, "")


@pytest.mark.parametrize(
    "forwarded_prefix",
    ["", "/api"],
    ids=["proxy strips the prefix", "proxy forwards it"],
)
def test_hypercorn_root_path(tmp_path: Path, forwarded_prefix: str) -> None:
    pytest.importorskip("hypercorn", reason="hypercorn is not installed")
    port = free_port()
    argv = [
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--root-path",
        "/api",
        "tests.e2e.servers:observed_app()",
    ]
    with serve(
        argv,
        port=port,
        env=server_env(),
        log=tmp_path / "hypercorn.log",
        ready=f"{forwarded_prefix}/ping",
    ) as server:
        check_endpoints(server.url, forwarded_prefix)
