"""configure_logging: JSON in production, console in development, one pipeline for all."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import pii
from asgi_observe.logs import config as asgi_logging
from asgi_observe.logs import processors as log_processors
from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.logs.config import (
    bind_request_id,
    clear_context,
    configure_logging,
    get_logger,
    json_dumps,
)
from asgi_observe.pii import is_sensitive_key
from asgi_observe.request_id import RequestIdMiddleware, get_request_id
from asgi_observe.settings import Settings
from tests.logs.support import json_logs, lines, restore_logging
from tests.support import free_port

__all__ = ["json_logs", "restore_logging"]  # fixtures used below

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# The repository, so subprocesses import this checkout's package and examples.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_script(script: str, **env: str) -> tuple[list[dict[str, Any]], str]:
    """Run `script` in a fresh interpreter; return its stdout as parsed JSON lines."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed = []
    for line in result.stdout.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\nstderr: {result.stderr}")
    return parsed, result.stdout


def test_production_lines_from_a_real_process() -> None:
    script = """
        import datetime, decimal, logging
        from asgi_observe.logs.config import configure_logging, get_logger, bind_request_id

        class Weird:
            def __repr__(self): raise RuntimeError("no repr")
            def __str__(self): raise RuntimeError("no str")

        configure_logging()
        configure_logging()  # idempotent: still one line per event
        log = get_logger("app.orders")
        log.debug("hidden at INFO")
        bind_request_id("rid-123")
        log.info("User action", user_id="123", email="bob@example.com", password="hunter2",
                 raw=b"\\xff\\x00", when=datetime.datetime(2024, 1, 1), amount=decimal.Decimal("9.99"),
                 weird=Weird(), nested={"cookie": "a", "items": [("x@example.com", 1)]},
                 nan=float("nan"))
        logging.getLogger("third.party").warning("user %s logged in", "carol@example.com")
        logging.getLogger("uvicorn.error").info("Started server process")
        try:
            raise ValueError("card 4111 1111 1111 1111 rejected")
        except ValueError:
            log.exception("payment failed")
            logging.getLogger("stdlib").exception("stdlib saw it too")
    """
    entries, stdout = _run_script(script, ENVIRONMENT="production", LOG_LEVEL="INFO")
    assert [e["event"] for e in entries] == [
        "User action",
        "user [REDACTED_EMAIL] logged in",
        "Started server process",
        "payment failed",
        "stdlib saw it too",
    ]
    for entry in entries:
        assert TIMESTAMP.fullmatch(entry["timestamp"])
        assert entry["request_id"] == "rid-123"
        assert {"event", "level", "timestamp", "logger"} <= set(entry)
    action = entries[0]
    assert (action["level"], action["logger"], action["user_id"]) == ("info", "app.orders", "123")
    assert action["email"] == "[REDACTED_EMAIL]"
    assert action["password"] == "[REDACTED]"
    assert action["raw"] == "\\xff\x00"
    assert action["when"] == "2024-01-01T00:00:00"
    assert action["amount"] == "9.99"
    assert action["weird"] == "<unprintable Weird>"
    assert action["nested"] == {"cookie": "[REDACTED]", "items": [["[REDACTED_EMAIL]", 1]]}
    assert action["nan"] == "nan"
    assert (entries[1]["logger"], entries[1]["level"]) == ("third.party", "warning")
    assert entries[2]["logger"] == "uvicorn.error"
    for failure in entries[3:]:
        assert failure["level"] == "error"
        assert "ValueError: card [REDACTED_CC] rejected" in failure["exception"]
    for secret in ("bob@example.com", "hunter2", "carol@", "4111 1111", "x@example.com"):
        assert secret not in stdout


def test_log_level_is_honoured_for_structlog_and_stdlib() -> None:
    script = """
        import logging
        from asgi_observe.logs.config import configure_logging, get_logger
        configure_logging()
        get_logger("a").info("structlog info")
        get_logger("a").warning("structlog warning")
        logging.getLogger("uvicorn.error").info("uvicorn info")
        logging.getLogger("uvicorn.error").error("uvicorn error")
    """
    entries, _ = _run_script(script, ENVIRONMENT="production", LOG_LEVEL="WARNING")
    assert [e["event"] for e in entries] == ["structlog warning", "uvicorn error"]


def test_uvicorn_serving_an_app_logs_json_only() -> None:
    port = free_port()
    script = f"""
        import threading, time, urllib.request
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from asgi_observe.logs.access import AccessLogMiddleware
        from asgi_observe.logs.config import configure_logging, get_logger
        from asgi_observe.request_id import RequestIdMiddleware

        def create_app():
            configure_logging()
            log = get_logger("app")

            async def hello(request):
                log.info("hello", who=request.query_params.get("who"))
                return PlainTextResponse("hi")

            app = Starlette(routes=[Route("/hello/{{name}}", hello)])
            return RequestIdMiddleware(AccessLogMiddleware(app))

        config = uvicorn.Config("__main__:create_app", factory=True, host="127.0.0.1",
                                port={port}, log_level="info")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        request = urllib.request.Request(
            "http://127.0.0.1:{port}/hello/x?who=dave%40example.com&token=t0k3n",
            headers={{"X-Request-ID": "wire-77"}})
        with urllib.request.urlopen(request) as response:
            assert response.headers["x-request-id"] == "wire-77"
        server.should_exit = True
        thread.join()
    """
    entries, stdout = _run_script(script, ENVIRONMENT="production", LOG_LEVEL="INFO")
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access", "app", "asgi_observe.access"} <= loggers
    [hello] = [e for e in entries if e["event"] == "hello"]
    assert (hello["who"], hello["request_id"]) == ("[REDACTED_EMAIL]", "wire-77")
    [access] = [e for e in entries if e["logger"] == "asgi_observe.access"]
    assert access["path"] == "/hello/x?who=[REDACTED_EMAIL]&token=[REDACTED]"
    assert (access["route"], access["status"], access["request_id"]) == (
        "/hello/{name}",
        200,
        "wire-77",
    )
    assert "dave" not in stdout
    assert "t0k3n" not in stdout


def test_uvicorn_access_lines_get_the_access_log_query_redaction() -> None:
    port = free_port()
    query = "code=c0de&X-Amz-Signature=s1gn&key=k3y&user%5Bpassword%5D=pw0rd&who=zoe%40example.com&page=2"
    script = f"""
        import threading, time, urllib.request
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from asgi_observe.logs.access import AccessLogMiddleware
        from asgi_observe.logs.config import configure_logging

        def create_app():
            configure_logging()

            async def callback(request):
                return PlainTextResponse("ok")

            return AccessLogMiddleware(Starlette(routes=[Route("/cb", callback)]))

        config = uvicorn.Config("__main__:create_app", factory=True, host="127.0.0.1",
                                port={port}, log_level="info")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with urllib.request.urlopen("http://127.0.0.1:{port}/cb?{query}") as response:
            assert response.status == 200
        server.should_exit = True
        thread.join()
    """
    entries, stdout = _run_script(script, ENVIRONMENT="production", LOG_LEVEL="INFO")
    [ours] = [e for e in entries if e["logger"] == "asgi_observe.access"]
    [uvicorn_line] = [e for e in entries if e["logger"] == "uvicorn.access"]
    expected = (
        "/cb?code=[REDACTED]&X-Amz-Signature=[REDACTED]&key=[REDACTED]"
        "&user%5Bpassword%5D=[REDACTED]&who=[REDACTED_EMAIL]&page=2"
    )
    assert ours["path"] == expected
    assert f'"GET {expected} HTTP/1.1" 200' in uvicorn_line["event"]
    for secret in ("c0de", "s1gn", "k3y", "pw0rd", "zoe"):
        assert secret not in stdout


async def test_two_hundred_concurrent_requests_keep_their_ids(json_logs: io.StringIO) -> None:
    log = get_logger("app")

    async def work(request: Request) -> PlainTextResponse:
        n = request.path_params["n"]
        log.info("start", n=n)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.info("end", n=n)
        return PlainTextResponse(n)

    app = RequestIdMiddleware(AccessLogMiddleware(Starlette(routes=[Route("/work/{n}", work)])))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await asyncio.gather(
            *(client.get(f"/work/{n}", headers={"X-Request-ID": f"id-{n}"}) for n in range(200))
        )
    entries = [e for e in lines(json_logs) if e["logger"] in ("app", "asgi_observe.access")]
    assert len(entries) == 600
    for entry in entries:
        n = entry.get("n") or entry["path"].rsplit("/", 1)[1]
        assert entry["request_id"] == f"id-{n}"


def test_trace_and_span_ids_are_added_inside_a_span(json_logs: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    log = get_logger("traced")
    log.info("outside")
    with tracer.start_as_current_span("work") as span:
        log.info("inside")
        logging.getLogger("stdlib.traced").warning("inside too")
        context = span.get_span_context()
    outside, inside, stdlib_inside = lines(json_logs)
    assert "trace_id" not in outside
    assert "span_id" not in outside
    for entry in (inside, stdlib_inside):
        assert entry["trace_id"] == format(context.trace_id, "032x")
        assert entry["span_id"] == format(context.span_id, "016x")
        assert re.fullmatch(r"[0-9a-f]{32}", entry["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", entry["span_id"])


def test_configure_twice_keeps_one_handler(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(environment="production"), stream=io.StringIO())
    configure_logging(Settings(environment="production"), stream=stream)
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_RootHandler"]
    assert len(ours) == 1
    logging.getLogger("x").warning("once")
    get_logger("y").warning("once too")
    assert [e["event"] for e in lines(stream)] == ["once", "once too"]


def test_server_loggers_are_rerouted_to_the_root_handler(restore_logging: None) -> None:
    stray = logging.StreamHandler(io.StringIO())
    uvicorn_logger = logging.getLogger("uvicorn.access")
    uvicorn_logger.addHandler(stray)
    uvicorn_logger.propagate = False
    stream = io.StringIO()
    configure_logging(Settings(environment="production"), stream=stream)
    assert stray not in uvicorn_logger.handlers
    assert uvicorn_logger.propagate
    uvicorn_logger.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4:1", "GET", "/u/a@b.co", "1.1", 200)
    [entry] = lines(stream)
    assert entry["event"] == '1.2.3.4:1 - "GET /u/[REDACTED_EMAIL] HTTP/1.1" 200'


def test_a_basic_config_console_handler_is_replaced(restore_logging: None) -> None:
    """daphne calls ``logging.basicConfig`` before importing the app: without this, every
    record came out twice, once in daphne's plain format beside the JSON line."""

    class Capturing(logging.StreamHandler):  # type: ignore[type-arg]
        """A subclass (as pytest's capture handlers are): not a server's console handler."""

    root = logging.getLogger()
    console = logging.StreamHandler()  # what basicConfig installs: sys.stderr
    captured, elsewhere = Capturing(sys.stderr), logging.StreamHandler(io.StringIO())
    for handler in (console, captured, elsewhere):
        root.addHandler(handler)
    stream = io.StringIO()
    configure_logging(Settings(environment="production"), stream=stream)
    assert console not in root.handlers
    assert captured in root.handlers
    assert elsewhere in root.handlers
    logging.getLogger("daphne.server").warning("Listening")
    assert [e["event"] for e in lines(stream)] == ["Listening"]


def test_development_renders_console_lines(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(environment="development"), stream=stream)
    get_logger("dev").info("User action", user_id="123", email="a@example.com")
    output = stream.getvalue()
    assert "User action" in output
    assert "user_id=123" in output
    assert "[REDACTED_EMAIL]" in output
    assert "a@example.com" not in output
    assert "\x1b[" not in output  # a StringIO is not a terminal
    assert not output.startswith("{")

    coloured = io.StringIO()
    configure_logging(Settings(environment="development"), stream=coloured, colors=True)
    get_logger("dev").info("in colour")
    assert "\x1b[" in coloured.getvalue()


def test_get_logger_names_the_calling_module(json_logs: io.StringIO) -> None:
    get_logger().info("named")
    assert lines(json_logs)[0]["logger"] == __name__


def test_bind_request_id_and_clear_context(json_logs: io.StringIO) -> None:
    log = get_logger("ctx")
    try:
        bind_request_id("manual-1")
        structlog.contextvars.bind_contextvars(user="u1")
        assert get_request_id() == "manual-1"
        log.info("bound")
    finally:
        clear_context()
    log.info("cleared")
    bound, cleared = lines(json_logs)
    assert (bound["request_id"], bound["user"]) == ("manual-1", "u1")
    assert "request_id" not in cleared
    assert "user" not in cleared
    assert get_request_id() is None


def test_loggers_follow_reconfiguration_and_capture_logs(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(Settings(environment="production"), stream=first)
    log = get_logger("kept")
    log.info("one")
    configure_logging(Settings(environment="production"), stream=second)
    log.info("two")
    with structlog.testing.capture_logs() as captured:
        log.info("three", card="4111 1111 1111 1111")
    assert [e["event"] for e in lines(first)] == ["one"]
    assert [e["event"] for e in lines(second)] == ["two"]
    assert captured == [{"event": "three", "card": "4111 1111 1111 1111", "log_level": "info"}]


def test_a_broken_stream_does_not_raise(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(environment="production"), stream=stream)
    stream.close()
    get_logger("x").info("into the void")
    logging.getLogger("y").warning("stdlib into the void")


class _Weird:
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "value",
    [
        {"a": b"\xff", "b": datetime.date(2024, 1, 1), "c": Decimal("1.5"), "d": {1, 2}},
        {(1, 2): "tuple key", "n": float("nan")},
        {"weird": _Weird()},
    ],
)
def test_json_dumps_renders_anything(value: dict[Any, Any]) -> None:
    assert isinstance(json.loads(json_dumps(value)), dict)


def test_json_dumps_survives_cycles() -> None:
    cyclic: dict[str, Any] = {"event": "loop"}
    cyclic["self"] = cyclic
    assert json.loads(json_dumps(cyclic))["event"] == "loop"


def test_a_server_logger_switched_off_stays_off(restore_logging: None) -> None:
    """``uvicorn --no-access-log`` empties and detaches uvicorn.access; keep it so."""
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    error = logging.getLogger("uvicorn.error")
    error.addHandler(logging.NullHandler())
    configure_logging(Settings(environment="production"), stream=io.StringIO())
    assert access.propagate is False
    assert not access.hasHandlers()
    assert error.propagate is True
    assert error.handlers == []


# --- write_event: the access log's cheaper route renders what the logger would ---

FROZEN_TIME = SimpleNamespace(
    time=lambda: 1_700_000_000.5, strftime=time.strftime, gmtime=time.gmtime
)


TRACER = TracerProvider().get_tracer("test.direct")


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


class _Inf(float):
    """A float subclass PIIRedactor keeps as is: the renderer's own fallback decides."""


SAFE_NAMES = [
    name
    for name in ("method", "path", "status", "user", "count", "ratio", "note", "nested", "when")
    if not is_sensitive_key(name)
]
ANY_NAMES = [*SAFE_NAMES, "password", "X-Api-Key", "session_id", "logger", "level", "event"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(
        [
            "bob@example.com",
            "call +62 812-3456-7890 now",
            "card 4111 1111 1111 1111",
            "Bearer abcdefghijkl",
            "pwd=hunter2",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "line\nbreak \x1b[31m",
            "café ☕",
            "",
        ]
    ),
    st.binary(max_size=8),
    st.just(datetime.datetime(2024, 1, 1, 12, 30)),
    st.just(Decimal("9.99")),
    st.just(_Unprintable()),
    st.just(_Inf("inf")),
    st.just(HTTPStatus.NOT_FOUND),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.sampled_from(["token", "email", "n"]), st.text(max_size=20), max_size=3),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_write_event_renders_what_the_logger_renders(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    method_name = data.draw(st.sampled_from(["debug", "info", "warning", "error", "critical"]))
    event = data.draw(st.one_of(st.text(max_size=20), st.just("mail bob@example.com")))
    plain = data.draw(st.booleans(), "plain keys")
    traced = data.draw(st.booleans(), "in a span")
    monkeypatch.setattr(log_processors, "time", FROZEN_TIME)
    names = SAFE_NAMES if plain else ANY_NAMES
    fields = data.draw(st.dictionaries(st.sampled_from(names), VALUES, max_size=6), "fields")
    fields.pop("event", None)  # the event is passed on its own
    bound = data.draw(
        st.dictionaries(
            st.sampled_from([*ANY_NAMES, "timestamp", "tenant", "exc_info"]), VALUES, max_size=4
        ),
        "bound",
    )
    if "exc_info" in bound:
        bound["exc_info"] = bool(bound["exc_info"])  # only what format_exc_info accepts
    json_logs.seek(0)
    json_logs.truncate()
    tokens = structlog.contextvars.bind_contextvars(**bound)
    try:
        with contextlib.ExitStack() as stack:
            if traced:
                stack.enter_context(TRACER.start_as_current_span("work"))
            assert asgi_logging.write_event(
                "app.direct", method_name, event, dict(fields), plain_keys=plain
            )
            direct = json_logs.getvalue()
            json_logs.seek(0)
            json_logs.truncate()
            getattr(get_logger("app.direct"), method_name)(event, **fields)
            through_logger = json_logs.getvalue()
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    if "unrenderable log event" not in direct:  # (a non-finite float subclass loses the line)
        assert ('"span_id":' in direct) is (traced or "span_id" in bound)
    assert direct.count("\n") == 1
    assert direct == through_logger


# Values `write_prepared_event` takes as its caller vouches for them: what redaction
# leaves unchanged under the default patterns (numbers, None, plain words, hex ids).
PLAIN_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["GET", "request", "probe/1.0", "127.0.0.1", "2001:db8::1", "/items/42"]),
    st.sampled_from(["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"]),
)
# Values under `unchecked`: any string (or None), redacted by the route itself.
UNCHECKED_VALUES = st.one_of(
    st.none(), st.text(max_size=40), VALUES.filter(lambda v: type(v) is str)
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_write_prepared_event_renders_what_the_logger_renders(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    method_name = data.draw(st.sampled_from(["debug", "info", "warning", "error", "critical"]))
    traced = data.draw(st.booleans(), "in a span")
    custom = data.draw(st.booleans(), "a pattern of our own")
    monkeypatch.setattr(log_processors, "time", FROZEN_TIME)
    names = data.draw(st.lists(st.sampled_from(SAFE_NAMES), unique=True, max_size=6), "names")
    unchecked = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    fields = {
        name: data.draw(UNCHECKED_VALUES if name in unchecked else PLAIN_VALUES, name)
        for name in names
    }
    bound = data.draw(
        st.dictionaries(
            st.sampled_from([*ANY_NAMES, "timestamp", "tenant", "exc_info"]), VALUES, max_size=4
        ),
        "bound",
    )
    if "exc_info" in bound:
        bound["exc_info"] = bool(bound["exc_info"])  # only what format_exc_info accepts
    json_logs.seek(0)
    json_logs.truncate()
    saved = list(pii.PII_PATTERNS)
    tokens = structlog.contextvars.bind_contextvars(**bound)
    try:
        if custom:  # no value is known to be plain then: a word, a number in an id
            pii.PII_PATTERNS.append((re.compile(r"GET|probe|f0|127"), "[MINE]"))
        with contextlib.ExitStack() as stack:
            if traced:
                stack.enter_context(TRACER.start_as_current_span("work"))
            assert asgi_logging.write_prepared_event(
                "app.direct", method_name, "request", dict(fields), unchecked
            )
            direct = json_logs.getvalue()
            json_logs.seek(0)
            json_logs.truncate()
            getattr(get_logger("app.direct"), method_name)("request", **fields)
            through_logger = json_logs.getvalue()
    finally:
        pii.PII_PATTERNS[:] = saved
        structlog.contextvars.reset_contextvars(**tokens)
    assert direct.count("\n") == 1
    assert direct == through_logger
    if custom:
        assert "GET" not in direct
        assert "probe" not in direct


def test_write_prepared_event_declines_and_drops_like_write_event(restore_logging: None) -> None:
    stream = io.StringIO()
    fields = {"path": "/a"}
    configure_logging(Settings(environment="development"), stream=stream, colors=False)
    assert not asgi_logging.write_prepared_event("x", "info", "e", fields, ())
    configure_logging(Settings(environment="production", log_level="WARNING"), stream=stream)
    with structlog.testing.capture_logs():
        assert not asgi_logging.write_prepared_event("x", "warning", "e", fields, ())
    assert not asgi_logging.write_prepared_event("x", "warn", "e", fields, ())  # an alias
    assert asgi_logging.write_prepared_event("x", "info", "e", fields, ())  # below the level
    assert fields == {"path": "/a"}  # untouched whenever it declined or dropped
    assert stream.getvalue() == ""
    assert asgi_logging.write_prepared_event("x", "warning", "e", fields, ["path"])
    assert [(e["event"], e["path"]) for e in lines(stream)] == [("e", "/a")]


def test_uses_default_patterns_until_the_list_changes() -> None:
    saved = list(pii.PII_PATTERNS)
    assert pii.uses_default_patterns()
    try:
        pii.PII_PATTERNS.append((re.compile(r"\bEMP-\d{6}\b"), "[REDACTED_EMPLOYEE]"))
        assert not pii.uses_default_patterns()
    finally:
        pii.PII_PATTERNS[:] = saved
    assert pii.uses_default_patterns()


def test_write_event_declines_what_it_cannot_reproduce(restore_logging: None) -> None:
    stream = io.StringIO()
    fields = {"path": "/a"}
    configure_logging(Settings(environment="development"), stream=stream, colors=False)
    assert not asgi_logging.write_event("x", "info", "e", fields, plain_keys=True)
    configure_logging(Settings(environment="production", log_level="WARNING"), stream=stream)
    with structlog.testing.capture_logs():
        assert not asgi_logging.write_event("x", "warning", "e", fields, plain_keys=True)
    assert not asgi_logging.write_event("x", "warn", "e", fields)  # an alias: the logger's job
    assert asgi_logging.write_event("x", "info", "e", fields)  # below the level: dropped
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    assert not asgi_logging.write_event("x", "warning", "e", fields)
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    assert not asgi_logging.write_event("x", "warning", "e", fields)
    assert fields == {"path": "/a"}  # untouched whenever it declined
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"event": "café", "who": "Jürgen"}, {"event": "café", "who": "Jürgen"}),  # escaped
        ({"big": 2**70}, {"big": 2**70}),  # beyond orjson's 64 bits: the stdlib's path
        ({1: "int key", None: "none key"}, {"1": "int key", "null": "none key"}),
        (
            {"when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)},
            {"when": "2024-01-02T03:04:05+00:00"},
        ),
        ({"raw": b"\xffbytes"}, {"raw": "\\xffbytes"}),
    ],
)
def test_json_dumps_is_orjson_with_an_ascii_and_lenient_fallback(
    value: dict[Any, Any], expected: dict[str, Any]
) -> None:
    line = json_dumps(value)
    assert line.isascii()  # any stream encoding can take it
    assert json.loads(line) == expected


def test_json_dumps_renders_the_access_log_line_with_orjson() -> None:
    event = {"event": "request", "method": "GET", "status": 200, "duration_ms": 1.25}
    assert json_dumps(event) == orjson.dumps(event).decode()


def test_json_dumps_uses_each_callers_default() -> None:
    class Thing:
        pass

    assert json_dumps({"a": Thing()}, default=lambda value: "first") == '{"a":"first"}'
    assert json_dumps({"a": Thing()}, default=lambda value: "second") == '{"a":"second"}'
    assert json_dumps({"a": {1, 2}}) == '{"a":[1,2]}'


@given(st.from_regex(r"\A[A-Za-z0-9]{0,40}[A-Za-z][A-Za-z0-9]{0,40}\Z"))
def test_ascii_ids_are_provably_clean(text: str) -> None:
    """redact_text returns letters-and-digits runs unchanged; every default pattern agrees."""
    assert pii.redact_text(text) == text
    for pattern, replacement in pii.PII_PATTERNS:
        assert pattern.sub(replacement, text) == text


def test_ids_do_not_push_repeated_values_out_of_the_memo() -> None:
    ids = ["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]
    for text in [*ids, "GET", "request"]:
        assert pii.redact_text(text) == text
    assert not set(ids) & set(pii._cache)
    assert {"GET", "request"} <= set(pii._cache)


@pytest.mark.parametrize(
    "text", ["4111111111111111", "5551234567", "eyJhbGciOiJIUzI1NiJ9", "bearerabcdefgh1", "x" * 300]
)
def test_id_shortcut_edges(text: str) -> None:
    expected = text
    for pattern, replacement in pii.PII_PATTERNS:
        expected = pattern.sub(replacement, expected)
    assert pii.redact_text(text) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1_700_000_000.0, "2023-11-14T22:13:20.000000Z"),
        (1_700_000_000.000042, "2023-11-14T22:13:20.000041Z"),  # truncated, as %06d of int()
        (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
        (1_700_000_001.999999, "2023-11-14T22:13:21.999999Z"),  # the next second's prefix
        (1_700_000_000.25, "2023-11-14T22:13:20.250000Z"),  # and back: the prefix follows
    ],
)
def test_utc_timestamps_are_iso_with_six_padded_microsecond_digits(
    monkeypatch: pytest.MonkeyPatch, now: float, expected: str
) -> None:
    stamper = log_processors.UTCTimeStamper()
    for moment in (1_700_000_001.5, now):  # a prefix cached for another second first
        monkeypatch.setattr(
            log_processors,
            "time",
            SimpleNamespace(time=lambda m=moment: m, strftime=time.strftime, gmtime=time.gmtime),
        )
        stamped = stamper(None, "info", {})
    assert stamped == {"timestamp": expected}
    assert stamped["timestamp"] == "{}.{:06d}Z".format(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))),
        int((now - int(now)) * 1_000_000),
    )
