"""Apps and helpers for tests that run real servers (uvicorn, gunicorn, hypercorn, granian,
daphne) as subprocesses: what a deployment does, workers, ``--root-path`` and exit codes
included. Each server runs in its own session (process group), so its workers can be
stopped together even when the master was killed.

The factories are server entry points (``uvicorn --factory tests.e2e.servers:observed_app``,
``gunicorn 'tests.e2e.servers:observed_app()'``); each call builds a fresh app and reads
its configuration from the environment the test gives the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import HealthApp, Settings, instrument
from asgi_observe.types import ASGIApp, Receive, Scope, Send
from tests.support import free_port, http_get, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
LOG_FORMAT = "%(levelname)s %(name)s [%(process)d] %(message)s"


def _log_to_stderr() -> None:
    """Our records on stderr, with the pid, so a test can tell the workers apart."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


async def _pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


def observed_app() -> ASGIApp:
    """A Starlette app answering ``/ping`` with its pid, instrumented from the environment,
    with a `HealthApp` at ``/health``."""
    _log_to_stderr()
    registry = CollectorRegistry()
    return instrument(
        Starlette(routes=[Route("/ping", _pid)]),
        Settings.from_env(),
        health=HealthApp(registry=registry),
        registry=registry,
    )


async def raising_startup_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose lifespan start-up raises after taking ``lifespan.startup``."""
    if scope["type"] == "lifespan":
        await receive()
        msg = "the database is unreachable"
        raise RuntimeError(msg)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"up"})


def observed_raising_startup_app() -> ASGIApp:
    """`raising_startup_app` inside the whole stack."""
    _log_to_stderr()
    return instrument(raising_startup_app, Settings.from_env(), registry=CollectorRegistry())


@dataclass
class ServerProcess:
    """A server started by `serve`; its stdout and stderr go to `log`."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 30) -> int:
        """Send `sig` to the server (the master, for servers with workers) as a process
        manager would, wait for it to exit, and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within {timeout}s of {sig.name}: {self.output()}")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of `process`'s process group (workers a dead master left)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def server_env(**extra: str) -> dict[str, str]:
    """The test's environment without this library's variables, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METRICS_", "PROMETHEUS_", "OTEL_"))
    }
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


@contextlib.contextmanager
def serve(
    argv: Sequence[str], *, port: int, env: dict[str, str], log: Path, ready: str = "/ping"
) -> Iterator[ServerProcess]:
    """Run ``python -m <argv>`` until the app answers `ready` with 200; stop it at exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see kill_group
        )
    server = ServerProcess(process, log, f"http://127.0.0.1:{port}")
    try:

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{argv[0]} exited with {process.returncode}: {server.output()}")
            try:
                return http_get(server.url + ready, timeout=1)[0] == 200
            except OSError:
                return False

        try:
            wait_until(answering, timeout=60, what=f"{argv[0]} to answer {ready}", interval=0.1)
        except pytest.fail.Exception:
            pytest.fail(f"{argv[0]} did not answer {ready} within 60s: {server.output()[-3000:]}")
        yield server
    finally:
        if process.poll() is None:
            stop_process(process, timeout=20, kill_timeout=10)
        kill_group(process)


def run_to_exit(argv: Sequence[str], *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <argv>`` expecting it to exit by itself (a failed start-up)."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def uvicorn_argv(target: str, port: int, *extra: str, factory: bool = True) -> list[str]:
    return [
        "uvicorn",
        *(["--factory"] if factory else []),
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


__all__ = [
    "REPO",
    "ServerProcess",
    "free_port",
    "kill_group",
    "observed_app",
    "observed_raising_startup_app",
    "raising_startup_app",
    "run_to_exit",
    "serve",
    "server_env",
    "uvicorn_argv",
]
