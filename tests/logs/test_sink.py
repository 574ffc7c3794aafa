"""The sink of `configure_logging`: lines logged in an event loop's thread are batched.

Behind a server the stream is a pipe or a file, and a write system call per line cost
more than building the line; the sink writes a loop iteration's lines with one write.
These tests pin what must not change with it: the same lines, whole and in order,
nothing lost (stdlib records, other threads, reconfiguration, ``logging.shutdown``,
interpreter exit, SIGTERM under load), and a broken stream never raising.

Streams here are real files and pipes: batching applies only to streams with a file
descriptor. The number of writes is read from the raw file object under the buffered
text layer, i.e. the ``write()`` system calls the stream really made.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.logs.config import BATCH_LIMIT, configure_logging, get_logger
from asgi_observe.settings import Settings
from tests.logs.support import restore_logging
from tests.support import free_port, wait_until

__all__ = ["restore_logging"]  # fixture used below

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = Settings(environment="production", log_level="INFO")


class CountingFile(io.FileIO):
    """A real file that counts the ``write()`` calls reaching it (one per system call)."""

    writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        written: int = super().write(data)
        return written


class LogFile:
    """A log file behind the usual buffered text layers, as ``sys.stdout`` to a file is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = CountingFile(path, "w")
        self.stream = io.TextIOWrapper(io.BufferedWriter(self.raw), encoding="utf-8")

    def text(self) -> str:
        """What reached the file so far (not what is still buffered in this process)."""
        return self.path.read_text(encoding="utf-8")

    def events(self) -> list[str]:
        """The ``event`` of every line so far; fails on a line that is not whole JSON."""
        return [json.loads(line)["event"] for line in self.text().splitlines()]


@pytest.fixture
def log_file(restore_logging: None, tmp_path: Path) -> Iterator[LogFile]:
    """Production logging into a real file."""
    target = LogFile(tmp_path / "log.jsonl")
    configure_logging(PRODUCTION, stream=target.stream)
    try:
        yield target
    finally:
        # Reconfiguring writes out what is buffered and leaves no sink on a closed file.
        configure_logging(PRODUCTION, stream=io.StringIO())
        target.stream.close()


async def next_iteration() -> None:
    """Let the loop run one iteration: callbacks scheduled before this run first."""
    await asyncio.sleep(0)


async def test_lines_of_one_loop_iteration_are_written_with_one_write(log_file: LogFile) -> None:
    log = get_logger("app")
    for n in range(5):
        log.info("line", n=n)
    assert log_file.raw.writes == 0
    assert log_file.text() == ""
    await next_iteration()
    assert log_file.events() == ["line"] * 5
    assert [json.loads(line)["n"] for line in log_file.text().splitlines()] == list(range(5))
    assert log_file.raw.writes == 1
    log.info("later")
    await next_iteration()
    assert log_file.events()[-1] == "later"
    assert log_file.raw.writes == 2


async def test_the_lines_are_the_same_with_and_without_batching(
    log_file: LogFile, restore_logging: None
) -> None:
    """The line of an event is what a stream without a file descriptor gets, byte for byte."""
    in_memory = io.StringIO()
    log = get_logger("app")
    log.info("same", user="bob@example.com", n=1)
    await next_iteration()
    batched = log_file.text()
    configure_logging(PRODUCTION, stream=in_memory)
    log.info("same", user="bob@example.com", n=1)
    direct = in_memory.getvalue()  # written at once: no system call to save
    assert batched.count("\n") == direct.count("\n") == 1
    strip = {"timestamp"}
    assert {k: v for k, v in json.loads(batched).items() if k not in strip} == {
        k: v for k, v in json.loads(direct).items() if k not in strip
    }


async def test_a_full_batch_is_written_at_once(log_file: LogFile) -> None:
    log = get_logger("app")
    payload = "x" * 1000
    count = BATCH_LIMIT // 1000 + 20
    for n in range(count):
        log.info("big", n=n, payload=payload)
    # No iteration has passed: what is there was written because the batch was full.
    written = log_file.events()
    assert 0 < len(written) < count
    assert log_file.raw.writes >= 1
    await next_iteration()
    numbers = [json.loads(line)["n"] for line in log_file.text().splitlines()]
    assert numbers == list(range(count))


async def test_a_thread_writes_after_the_batch_and_at_once(log_file: LogFile) -> None:
    log = get_logger("app")
    log.info("from the loop")
    thread = threading.Thread(target=lambda: get_logger("worker").info("from a thread"))
    thread.start()
    thread.join()
    # Before any iteration: the thread wrote the batch first, then its own line.
    assert log_file.events() == ["from the loop", "from a thread"]


async def test_lines_from_a_thread_while_the_loop_logs_stay_whole_and_in_order(
    log_file: LogFile,
) -> None:
    count = 400
    start = threading.Event()

    def worker() -> None:
        start.wait()
        log = get_logger("worker")
        for n in range(count):
            log.info("thread", n=n, pad="t" * (n % 300))

    thread = threading.Thread(target=worker)
    thread.start()
    log = get_logger("app")
    start.set()
    for n in range(count):
        log.info("loop", n=n, pad="l" * (n % 300))
        if n % 7 == 0:
            await next_iteration()
    await asyncio.to_thread(thread.join)
    await next_iteration()
    by_source: dict[str, list[int]] = {"thread": [], "loop": []}
    for line in log_file.text().splitlines():
        entry = json.loads(line)  # every line whole
        by_source[entry["event"]].append(entry["n"])
    assert by_source == {"thread": list(range(count)), "loop": list(range(count))}


async def test_a_stdlib_record_is_written_at_once_after_the_batch(log_file: LogFile) -> None:
    get_logger("app").info("structlog first")
    logging.getLogger("uvicorn.error").error("stdlib second")
    assert log_file.events() == ["structlog first", "stdlib second"]


async def test_reconfiguration_writes_the_batch_to_the_old_stream(
    log_file: LogFile, tmp_path: Path
) -> None:
    get_logger("app").info("to the first file")
    second = LogFile(tmp_path / "second.jsonl")
    try:
        configure_logging(PRODUCTION, stream=second.stream)
        assert log_file.events() == ["to the first file"]
        get_logger("app").info("to the second file")
        await next_iteration()
        assert second.events() == ["to the second file"]
        assert log_file.events() == ["to the first file"]
    finally:
        configure_logging(PRODUCTION, stream=io.StringIO())
        second.stream.close()


async def test_a_stream_without_a_file_descriptor_gets_each_line_at_once(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    configure_logging(PRODUCTION, stream=stream)
    get_logger("app").info("at once")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["at once"]


async def test_a_closed_pipe_is_reported_once_and_never_raises(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    configure_logging(PRODUCTION, stream=stream)
    try:

        async def hello(request: Request) -> PlainTextResponse:
            get_logger("app").info("in the request")
            return PlainTextResponse("hi")

        app = AccessLogMiddleware(Starlette(routes=[Route("/hello", hello)]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(3):
                response = await client.get("/hello")
                assert (response.status_code, response.text) == (200, "hi")
                await next_iteration()  # the batch is written (and fails) here
        get_logger("app").info("a full batch", payload="x" * BATCH_LIMIT)
        await asyncio.to_thread(get_logger("worker").info, "from a thread")
        logging.getLogger("stdlib").warning("a stdlib record")
        await next_iteration()
    finally:
        configure_logging(PRODUCTION, stream=io.StringIO())
        asyncio.get_running_loop().set_exception_handler(None)
        with contextlib.suppress(BrokenPipeError):  # what the text layer still holds
            stream.close()
    assert loop_errors == []
    assert capfd.readouterr().err.count("asgi_observe: writing a log line failed") == 1


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ENVIRONMENT": "production"},
        check=False,
    )


def test_the_batch_is_written_at_interpreter_exit() -> None:
    # SystemExit leaves run_until_complete at once: the loop never runs the iteration
    # that would have written the batch, and the interpreter exits.
    result = _run("""
        import asyncio
        from asgi_observe.logs.config import configure_logging, get_logger

        async def main():
            get_logger("app").info("before exit", n=1)
            get_logger("app").info("before exit", n=2)
            raise SystemExit(0)

        configure_logging()
        asyncio.new_event_loop().run_until_complete(main())
    """)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event"], e["n"]) for e in entries] == [("before exit", 1), ("before exit", 2)]


def test_logging_shutdown_writes_the_batch() -> None:
    # os._exit skips atexit: only logging.shutdown can have written the line.
    result = _run("""
        import asyncio, logging, os
        from asgi_observe.logs.config import configure_logging, get_logger

        async def main():
            get_logger("app").info("before shutdown")
            logging.shutdown()
            os._exit(0)

        configure_logging()
        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["before shutdown"]


def test_a_forked_child_does_not_write_its_parents_batch() -> None:
    result = _run("""
        import asyncio, logging, os
        from asgi_observe.logs.config import configure_logging, get_logger

        async def main():
            get_logger("app").info("before the fork")  # buffered in the parent
            pid = os.fork()
            if pid == 0:
                logging.getLogger("child").warning("in the child")  # writes what it buffered
                os._exit(0)
            os.waitpid(pid, 0)
            await asyncio.sleep(0)

        configure_logging()
        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert sorted(events) == ["before the fork", "in the child"]


APP_MODULE = """
import asyncio, os, signal

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import Settings, configure_logging, instrument

REQUESTS = int(os.environ["SINK_TEST_REQUESTS"])
SIGNAL_WHEN = os.environ["SINK_TEST_SIGNAL_WHEN"]


def create_app():
    settings = Settings.from_env()
    configure_logging(settings)
    arrived = completed = 0
    everyone = asyncio.Event()

    async def item(request):
        # Every request waits until all have arrived: they are in flight together.
        nonlocal arrived
        arrived += 1
        if arrived == REQUESTS:
            if SIGNAL_WHEN == "in_flight":
                os.kill(os.getpid(), signal.SIGTERM)
            everyone.set()
        await everyone.wait()
        return PlainTextResponse("ok")

    app = instrument(Starlette(routes=[Route("/items/{n}", item)]), settings)

    async def signal_after_the_last(scope, receive, send):
        nonlocal completed
        await app(scope, receive, send)
        if scope["type"] == "http":
            completed += 1
            # Released together, the requests complete in one loop iteration: their
            # access lines are all still buffered when the signal arrives.
            if completed == REQUESTS and SIGNAL_WHEN == "completed":
                os.kill(os.getpid(), signal.SIGTERM)

    return signal_after_the_last
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get(port: int, request_id: str) -> str | None:
    """GET one item; the request id the response echoes, or None without a response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/items/{request_id}", headers={"X-Request-ID": request_id})
        response = connection.getresponse()
        response.read()
        return response.getheader("x-request-id") if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


@pytest.mark.parametrize("signal_when", ["in_flight", "completed"])
def test_sigterm_under_load_loses_no_access_line(tmp_path: Path, signal_when: str) -> None:
    requests = 24
    (tmp_path / "sink_app.py").write_text(APP_MODULE)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "ENVIRONMENT": "production",
        "LOG_LEVEL": "INFO",
        "SINK_TEST_REQUESTS": str(requests),
        "SINK_TEST_SIGNAL_WHEN": signal_when,
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "sink_app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--http", "h11", "--loop", "asyncio",
        "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(
            lambda: _listening(port) or process.poll() is not None, timeout=30, what="uvicorn"
        )
        with ThreadPoolExecutor(max_workers=requests) as pool:
            ids = [f"sink-{signal_when}-{n}" for n in range(requests)]
            answered = [rid for rid in pool.map(lambda rid: _get(port, rid), ids) if rid]
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"the server did not exit after SIGTERM:\n{stdout[-3000:]!r}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Exited on its own after the signal: uvicorn re-raises SIGTERM once it has shut down.
    assert process.returncode in (0, -signal.SIGTERM), stderr.decode(errors="replace")
    # Every request was in flight when the signal came, and the server answered them all.
    assert sorted(answered) == sorted(ids)
    entries = []
    for line in stdout.decode().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a whole JSON line: {line!r}")
    logged = [e["request_id"] for e in entries if e["logger"] == "asgi_observe.access"]
    assert sorted(logged) == sorted(answered)
    assert any(e["event"].startswith("Finished server process") for e in entries)
