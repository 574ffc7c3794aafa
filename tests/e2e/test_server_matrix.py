"""The reference example under every ASGI server we document, each a real process.

uvicorn (h11 and httptools), hypercorn, granian (``--interface asgi``), daphne, and
gunicorn with two uvicorn workers sharing ``PROMETHEUS_MULTIPROC_DIR``. For each:

- an example route answers 200 and echoes the ``X-Request-ID`` it was sent, or a
  generated one; ``/metrics`` counts it under the route template (``handler``), and the
  health probes answer 200 (no DATABASE_URL/REDIS_URL: SQLite and the disk are checked);
- the JSON access line of each request (``ENVIRONMENT=production``) is found in the
  server's output by its request id, with route, status and trace id; records logged in
  the app's process come out once, as JSON only (no plain duplicate, no server access
  line outside the JSON);
- the server's own root-path option, with requests sent the way a proxy in front of that
  server forwards them (uvicorn and uvicorn workers expect the prefix stripped, the
  others the full path);
- SIGTERM is a clean shutdown: exit code 0 (uvicorn ends by the signal it re-raises),
  and spans held back by a 60 s batch delay reach a real OTLP/HTTP receiver only then,
  from every worker.

Each case's `notes` say what the server needs; README.md "Servers" documents them.

A server that cannot run here skips with its reason locally and fails in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asgi_observe import Settings
from examples.baliblissed import build_api
from tests.e2e.servers import ServerProcess, free_port, serve, server_env
from tests.support import http_get, require, wait_until
from tests.tracing.otlp_receivers import DecodedSpan, Receiver, http_receiver

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

ROUTE = "/destinations/{slug}"
SPAN_NAME = f"GET {ROUTE}"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
PROBES = {"/health/live": "live", "/health/ready": "ready", "/health/startup": "started"}
ROOT_PATH = "/api"
HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ServerCase:
    """How to run the example under one server, and what that server's conventions are."""

    name: str
    module: str  # the server's package, which must be importable
    argv: Callable[[int, str], list[str]]  # `python -m` arguments for (port, root path or "")
    root_path_env: Callable[[str], dict[str, str]] = lambda _root: {}
    proxy_strips_prefix: bool = False  # a proxy sends /api/x as /x (the server adds /api)
    workers: int = 1
    runs_lifespan: bool = True
    # What a clean SIGTERM shutdown exits with: uvicorn (since 0.29) re-raises the signal
    # it caught once shutdown is complete, so its process ends *by* SIGTERM (-15), as a
    # process manager expects of a program that honours the signal.
    exit_code: int = 0
    # A line the server logs through the stdlib in the app's process, after the app was
    # loaded: in production it must come out once, as JSON, like the app's own lines.
    server_line: str | None = None
    notes: str = ""


def _uvicorn(http: str) -> Callable[[int, str], list[str]]:
    def argv(port: int, root: str) -> list[str]:
        return [
            "uvicorn",
            "--factory",
            "examples.baliblissed:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            http,
            *(["--root-path", root] if root else []),
        ]

    return argv


def _hypercorn(port: int, root: str) -> list[str]:
    return [
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        # Its error logger's own stderr handler would print each line a second time,
        # outside our JSON; its records still propagate to the root handler.
        "--error-logfile",
        "/dev/null",
        *(["--root-path", root] if root else []),
        "examples.baliblissed:create_app()",
    ]


def _granian(port: int, root: str) -> list[str]:
    return [
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--url-path-prefix", root] if root else []),
        "examples.baliblissed:create_app",
    ]


def _daphne(port: int, root: str) -> list[str]:
    return [
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        # daphne writes its own access lines straight to stdout, past logging: neither
        # JSON nor redacted. The library's access log replaces them.
        "--access-log",
        "/dev/null",
        *(["--root-path", root] if root else []),
        "tests.e2e.asgi_entry:app",
    ]


def _gunicorn(port: int, root: str) -> list[str]:
    worker = (
        "tests.e2e.gunicorn_workers.RootPathUvicornWorker"
        if root
        else "uvicorn_worker.UvicornWorker"
    )
    return [
        "gunicorn",
        "--workers",
        "2",
        "--worker-class",
        worker,
        "--bind",
        f"127.0.0.1:{port}",
        "--no-control-socket",  # gunicorn 24+ otherwise shares one socket under $HOME
        "examples.baliblissed:create_app()",
    ]


CASES = [
    ServerCase(
        "uvicorn-h11",
        "uvicorn",
        _uvicorn("h11"),
        proxy_strips_prefix=True,
        exit_code=-signal.SIGTERM,
        server_line="Application startup complete.",
    ),
    ServerCase(
        "uvicorn-httptools",
        "httptools",
        _uvicorn("httptools"),
        proxy_strips_prefix=True,
        exit_code=-signal.SIGTERM,
        server_line="Application startup complete.",
    ),
    ServerCase(
        "hypercorn",
        "hypercorn",
        _hypercorn,
        server_line="Running on http://127.0.0.1",
        notes="hypercorn gives its error logger a stderr handler of its own once the app is "
        "loaded, so its lines came out twice; --error-logfile /dev/null leaves the JSON copy",
    ),
    # The granian worker that loads the app logs nothing of its own at info level; the
    # "[INFO] ..." lines come from its main process, which never imports the app.
    ServerCase("granian", "granian", _granian),
    ServerCase(
        "daphne",
        "daphne",
        _daphne,
        runs_lifespan=False,
        server_line="Listening on TCP address",
        notes="daphne speaks no lifespan protocol: the example's start-up (its table and "
        "seed rows) must run beforehand, and spans are flushed at interpreter exit; its "
        "own access log bypasses logging (--access-log /dev/null)",
    ),
    ServerCase(
        "gunicorn-uvicorn-worker",
        "uvicorn_worker",
        _gunicorn,
        root_path_env=lambda root: {"E2E_ROOT_PATH": root},
        proxy_strips_prefix=True,
        workers=2,
        server_line="Application startup complete.",
        notes="gunicorn's --root-path reaches only its own ASGI worker; uvicorn workers "
        "take uvicorn's root_path from a UvicornWorker subclass (CONFIG_KWARGS)",
    ),
]


def require_server(case: ServerCase) -> None:
    require(
        importlib.util.find_spec(case.module) is not None,
        f"{case.module} is not installed (pip install -e '.[dev]')",
    )


def seed_database(url: str) -> None:
    """Create and fill the example's table the way its lifespan start-up does.

    Needed where that start-up cannot do it: daphne runs no lifespan, and two gunicorn
    workers starting together on one fresh SQLite file would race on its first writes
    (one fails with 'database is locked'), as a deployment runs migrations first.
    """

    async def run_startup() -> None:
        api = build_api(Settings(database_url=url), registry=CollectorRegistry())
        async with LifespanManager(api):
            pass

    asyncio.run(run_startup())


@dataclass
class Run:
    """One server process under test and what the test sent it."""

    case: ServerCase
    server: ServerProcess
    prefix: str  # what the test puts before each path, as the proxy would
    sent_ids: list[str] = field(default_factory=list)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        status, response_headers, body = http_get(
            self.server.url + self.prefix + path, headers=headers
        )
        return status, {k.lower(): v for k, v in response_headers.items()}, body

    def destination(self, request_id: str | None = None) -> str:
        """GET the example's parameterised route; returns the request id it answered with."""
        headers = {"X-Request-ID": request_id} if request_id else {}
        status, response_headers, body = self.get("/destinations/ubud", headers)
        assert status == 200, (status, body[:300], self.server.output()[-3000:])
        assert json.loads(body)["slug"] == "ubud"
        answered = response_headers.get("x-request-id", "")
        if request_id is not None:
            assert answered == request_id, response_headers
        else:
            assert answered, f"no generated X-Request-ID: {response_headers}"
        self.sent_ids.append(answered)
        return answered

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        status, _, body = self.get("/metrics")
        assert status == 200, body[:300]
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == name
        ]

    def access_lines(self) -> dict[str, dict[str, Any]]:
        """Our JSON access lines in the server's output, by request id."""
        lines: dict[str, dict[str, Any]] = {}
        for line in self.server.output().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("logger") == "asgi_observe.access" and "request_id" in event:
                lines[event["request_id"]] = event
        return lines

    def wait_for_access_lines(self) -> dict[str, dict[str, Any]]:
        """The line of every sent request (written just after its response: poll)."""
        found: dict[str, dict[str, Any]] = {}

        def all_logged() -> bool:
            nonlocal found
            found = self.access_lines()
            return all(rid in found for rid in self.sent_ids)

        try:
            wait_until(all_logged, timeout=30, what="the access lines of the sent requests")
        except pytest.fail.Exception:
            missing = [rid for rid in self.sent_ids if rid not in found]
            pytest.fail(f"no access line for {missing}: {self.server.output()[-3000:]}")
        return found


@contextlib.contextmanager
def run_server(
    case: ServerCase, tmp_path: Path, *, receiver: Receiver | None = None, root: str = ""
) -> Iterator[Run]:
    """Start the example under `case` with a fresh SQLite file, production logs, and
    (with `receiver`) OTLP/HTTP export held back until shutdown by a 60 s batch delay."""
    require_server(case)
    database = f"sqlite+aiosqlite:///{tmp_path / 'baliblissed.sqlite3'}"
    if not case.runs_lifespan or case.workers > 1:
        seed_database(database)
    env = server_env(
        ENVIRONMENT="production",
        DATABASE_URL=database,
        PYTHONUNBUFFERED="1",  # access lines reach the log file as they are written
        **case.root_path_env(root),
    )
    if receiver is not None:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="60000",
            # process.pid on each span's resource tells the workers apart
            OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otel,process",
        )
    if case.workers > 1:
        multiproc = tmp_path / "prometheus-multiproc"
        multiproc.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    prefix = ROOT_PATH if root and not case.proxy_strips_prefix else ""
    port = free_port()
    with serve(
        case.argv(port, root),
        port=port,
        env=env,
        log=tmp_path / f"{case.name}.log",
        ready=prefix + "/health/live",
    ) as server:
        marker = case.server_line
        if case.workers > 1 and marker is not None:
            # One worker answering is not all of them: wait until each has started.
            wait_until(
                lambda: server.output().count(marker) >= case.workers,
                timeout=60,
                what=f"{case.workers} workers to log {marker!r}",
                interval=0.1,
            )
        yield Run(case, server, prefix)


def server_spans(receiver: Receiver) -> list[DecodedSpan]:
    return [s for s in receiver.snapshot() if s.kind == SERVER_KIND and s.name == SPAN_NAME]


def route_count(run: Run) -> float:
    """``http_requests_total`` of the example route, across every worker; and no
    sample labelled with the raw path."""
    samples = run.samples("http_requests_total")
    assert not [labels for labels, _ in samples if "ubud" in labels.get("handler", "")]
    return sum(
        value
        for labels, value in samples
        if labels.get("handler") == ROUTE
        and labels.get("method") == "GET"
        and labels.get("status") == "200"
    )


def serve_from_every_worker(run: Run) -> int:
    """Send requests until every worker has answered one; returns how many were sent.

    Each worker keeps its own in-memory cache (no REDIS_URL), so the first request for a
    destination in a worker is a cache miss: the summed miss counter equals the number
    of workers that have served it. Bounded: a worker that never answers fails the test.
    """
    sent = 0
    while sent < 200:
        run.destination(f"spread-{sent}")
        sent += 1
        misses = sum(value for _, value in run.samples("baliblissed_cache_misses_total"))
        if misses >= run.case.workers:
            return sent
    pytest.fail(f"only some of {run.case.workers} workers answered {sent} requests")


OPEN_METRICS_WARNING = "/metrics is open to anyone"


def check_json_only(run: Run) -> None:
    """Records logged in the app's process come out once each, as JSON only: our own
    start-up warning (once per worker) and the server's `server_line`; and no line
    about a request (a server's own access line) escapes the JSON and its redaction."""
    output = run.server.output().splitlines()
    plain = [line for line in output if "/destinations/" in line and not line.startswith("{")]
    assert not plain, plain
    warnings = [line for line in output if OPEN_METRICS_WARNING in line]
    assert len(warnings) == run.case.workers, warnings
    assert all(json.loads(line)["level"] == "warning" for line in warnings), warnings
    marker = run.case.server_line
    if marker is not None:
        found = [line for line in output if marker in line]
        assert found, f"{marker!r} not in {run.server.output()[-2000:]}"
        assert all(line.startswith("{") for line in found), found


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_example_under_server(case: ServerCase, tmp_path: Path) -> None:
    with http_receiver() as receiver, run_server(case, tmp_path, receiver=receiver) as run:
        sent_id = f"matrix-{case.name}-1"
        assert run.destination(sent_id) == sent_id
        generated = run.destination()
        assert generated != sent_id
        run.destination(f"matrix-{case.name}-2")
        if case.workers > 1:
            serve_from_every_worker(run)
        # Every request counted once, whichever worker answered it.
        assert route_count(run) == len(run.sent_ids)

        for path, state in PROBES.items():
            status, _, body = run.get(path)
            assert status == 200, (path, body[:500])
            answer = json.loads(body)
            assert answer["status"] == state, answer
            if path == "/health/ready":
                assert set(answer["checks"]) == {"database", "disk"}, answer

        lines = run.wait_for_access_lines()
        for rid in run.sent_ids:
            line = lines[rid]
            assert line["route"] == ROUTE, line
            assert line["status"] == 200, line
            assert line["path"] == "/destinations/ubud", line
            assert HEX32.fullmatch(line["trace_id"]), line

        check_json_only(run)

        # The batch delay holds every span back: what arrives next is the shutdown's flush.
        assert receiver.snapshot() == []
        code = run.server.stop()
        assert code == case.exit_code, (case.notes, run.server.output()[-3000:])
        assert "Traceback" not in run.server.output(), run.server.output()[-3000:]

        spans = server_spans(receiver)
        received = {span.trace_id for span in spans}
        missing = {rid for rid in run.sent_ids if lines[rid]["trace_id"] not in received}
        assert not missing, (missing, [s.name for s in receiver.snapshot()])
        if case.workers > 1:
            workers = {
                int(pid)
                for pid in re.findall(r"Booting worker with pid: (\d+)", run.server.output())
            }
            assert len(workers) == case.workers, run.server.output()[-3000:]
            assert {span.resource["process.pid"] for span in spans} == workers


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_example_under_server_root_path(case: ServerCase, tmp_path: Path) -> None:
    with run_server(case, tmp_path, root=ROOT_PATH) as run:
        for path, state in PROBES.items():
            status, _, body = run.get(path)
            assert status == 200, (run.prefix + path, status, body[:500])
            assert json.loads(body)["status"] == state
        # The server did put the prefix in the scope: FastAPI lists it as the API's server
        # (without this, the prefix-stripping conventions would pass with no root path).
        status, _, body = run.get("/openapi.json")
        assert status == 200, body[:300]
        assert json.loads(body)["servers"] == [{"url": ROOT_PATH}]
        run.destination(f"root-{case.name}")
        # The handler is the route below the root path, the same label as without one.
        assert route_count(run) == 1
        line = run.wait_for_access_lines()[f"root-{case.name}"]
        # The path logged is the full one, prefix included, under either convention.
        assert (line["route"], line["path"]) == (ROUTE, ROOT_PATH + "/destinations/ubud"), line
