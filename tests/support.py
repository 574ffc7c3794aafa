"""Shared test helpers: free ports, a real uvicorn in a thread, and the real parts.

Real parts (Prometheus, Redis, PostgreSQL) are started from binaries installed by
`make test` (scripts/install_realparts.sh). A missing binary skips the test locally with
the reason, and fails it when CI=true, so CI can never pass by skipping.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import uvicorn

from asgi_observe.types import ASGIApp, Message

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI, when a real part is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required real part missing in CI: {reason}")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (run `make test` as root to install it)")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def stop_process(
    process: subprocess.Popen[Any], *, timeout: float, kill_timeout: float | None = None
) -> None:
    """Terminate `process` and reap it; kill it if it has not exited within `timeout` seconds.

    A test's server must never outlive the test, whether it stops politely or not.
    `kill_timeout` bounds the wait after the kill (None: wait as long as it takes).
    """
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=kill_timeout)


@dataclass
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def run_uvicorn(
    app: ASGIApp,
    *,
    port: int | None = None,
    lifespan: Literal["auto", "on", "off"] = "on",
    **config: Any,
) -> Iterator[RunningServer]:
    """Serve `app` with a real uvicorn in a thread; polls `server.started` (no fixed sleeps)."""
    chosen = port or free_port()
    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=chosen, log_level="warning", lifespan=lifespan, **config
    )
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: server.started or not thread.is_alive(), timeout=15, what="uvicorn start-up"
        )
        if not server.started:
            pytest.fail("uvicorn exited during start-up")
        yield RunningServer("127.0.0.1", chosen, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def drive_lifespan(
    app: Any,
    kinds: tuple[str, ...] = ("lifespan.startup", "lifespan.shutdown"),
    *,
    sent: list[Message] | None = None,
) -> list[Message]:
    """Play the server's side of the lifespan protocol; returns what the app sent.

    Pass `sent` to keep the messages when the app is expected to raise.
    """
    incoming: list[Message] = [{"type": kind} for kind in kinds]
    answers: list[Message] = [] if sent is None else sent

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        answers.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return answers


def http_get(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """A blocking GET that returns error statuses instead of raising."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


# --- Prometheus -----------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def query(self, promql: str) -> tuple[int, dict[str, Any]]:
        status, _, body = http_get(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        )
        return status, json.loads(body)

    def vector(self, promql: str) -> list[dict[str, Any]]:
        status, payload = self.query(promql)
        assert status == 200, payload
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def wait_for(self, promql: str, *, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll until `promql` returns a non-empty vector (first scrape lands after ~5.5 s)."""
        found: list[dict[str, Any]] = []

        def has_result() -> bool:
            nonlocal found
            found = self.vector(promql)
            return bool(found)

        wait_until(
            has_result, timeout=timeout, what=f"Prometheus result for {promql!r}", interval=0.25
        )
        return found

    def exemplars(self, promql: str) -> list[dict[str, Any]]:
        now = time.time()
        params = urllib.parse.urlencode({"query": promql, "start": now - 600, "end": now + 60})
        status, _, body = http_get(f"{self.url}/api/v1/query_exemplars?{params}")
        assert status == 200, body
        data: list[dict[str, Any]] = json.loads(body)["data"]
        return data


@contextlib.contextmanager
def run_prometheus(
    targets: list[str], *, metrics_path: str = "/metrics", extra_job: str = ""
) -> Iterator[Prometheus]:
    """Start a real Prometheus scraping `targets` (host:port) every second."""
    binary = require_binary("prometheus")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="asgi-observe-prom-"))
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: app\n"
        f"    metrics_path: {metrics_path}\n"
        f"    static_configs:\n      - targets: {json.dumps(targets)}\n" + extra_job
    )
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, workdir)
    try:
        wait_until(
            lambda: process.poll() is None and _ready(f"{prom.url}/-/ready"),
            timeout=20,
            what="Prometheus /-/ready",
            interval=0.1,
        )
        yield prom
    finally:
        stop_process(process, timeout=10, kill_timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        status, _, _ = http_get(url, timeout=1)
    except OSError:
        return False
    return status == 200


# --- Redis and PostgreSQL -------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        pidfile = self.workdir / "redis.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            wait_until(lambda: not _alive(pid), timeout=10, what="redis shutdown")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def run_redis() -> Iterator[RedisServer]:
    binary = require_binary("redis-server")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="asgi-observe-redis-"))
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--dir",
            str(workdir),
            "--pidfile",
            str(workdir / "redis.pid"),
            "--logfile",
            str(workdir / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    server = RedisServer(port, workdir)
    try:
        wait_until(lambda: _port_open(port), timeout=10, what="redis start-up")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class PostgresServer:
    port: int
    workdir: Path
    pgbin: Path
    password: str = "postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.pgbin / "pg_ctl"),
                "-D",
                str(self.workdir / "pg" / "data"),
                *args,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")


def _pgbin() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()],
    )
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    pgbin = _pgbin()
    require(pgbin is not None, "PostgreSQL server binaries are not installed")
    assert pgbin is not None
    require(
        os.geteuid() == 0 and shutil.which("runuser") is not None,
        "starting PostgreSQL needs root and runuser",
    )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="asgi-observe-pg-"))
    workdir.chmod(0o755)
    pgdir = workdir / "pg"
    subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", str(pgdir)], check=True)
    (pgdir / "pw").write_text("postgres\n")
    shutil.chown(pgdir / "pw", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(pgbin / "initdb"),
            "-D",
            str(pgdir / "data"),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pgdir / 'pw'}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    server = PostgresServer(port, workdir, pgbin)
    server.pg_ctl(
        "-l",
        str(pgdir / "pg.log"),
        "-w",
        "-t",
        "30",
        "-o",
        f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- Hanging and refused dependencies -------------------------------------------------


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP listener that accepts connections and never answers; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port: int = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def refused_port() -> int:
    """A port that was bound, closed and not reused: connecting to it is refused."""
    return free_port()
