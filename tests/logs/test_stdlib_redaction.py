"""stdlib and server access lines get the query redaction of the library's own access log."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from gunicorn.glogging import SafeAtoms  # type: ignore[import-untyped]  # no stubs
from hypercorn.logging import AccessLogAtoms

from asgi_observe.logs.processors import StdlibQueryRedactor
from tests.logs.support import json_logs, lines, restore_logging

__all__ = ["json_logs", "restore_logging"]  # fixtures used below

UVICORN_FORMAT = '%s - "%s %s HTTP/%s" %d'
SECRET_QUERY = "code=c0de&X-Amz-Signature=s1gn&key=k3y&user[password]=pw&page=2"
SECRETS = ("c0de", "s1gn", "k3y", "=pw")
REDACTED_QUERY = (
    "code=[REDACTED]&X-Amz-Signature=[REDACTED]&key=[REDACTED]&user[password]=[REDACTED]&page=2"
)


def _record(name: str, msg: str, args: Any) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, msg, args, None)


def _process(record: logging.LogRecord) -> str:
    """What the processor makes of `record` as ProcessorFormatter(pass_foreign_args) hands it."""
    event = {
        "event": record.getMessage(),
        "_record": record,
        "_from_structlog": False,
        "positional_args": record.args,
    }
    out = StdlibQueryRedactor()(None, "info", event)
    assert "positional_args" not in out
    message = out["event"]
    assert isinstance(message, str)
    return message


def test_uvicorn_path_argument_loses_its_query_secrets() -> None:
    args = ("127.0.0.1:51000", "GET", f"/cb?{SECRET_QUERY}", "1.1", 200)
    message = _process(_record("uvicorn.access", UVICORN_FORMAT, args))
    assert message == f'127.0.0.1:51000 - "GET /cb?{REDACTED_QUERY} HTTP/1.1" 200'


def test_the_whole_query_of_a_path_argument_is_redacted() -> None:
    # A query is everything after "?" in a request target, even what free text would
    # take for a delimiter.
    args = ("c", "GET", "/cb?code=ab'cd<ef&token=t0k", "1.1", 200)
    message = _process(_record("uvicorn.access", UVICORN_FORMAT, args))
    assert "cd" not in message
    assert "t0k" not in message


def test_gunicorn_atoms_are_redacted_through_their_own_lookup() -> None:
    atoms = SafeAtoms(
        {
            "h": "10.0.0.1",
            "r": f"GET /cb?{SECRET_QUERY} HTTP/1.1",
            "q": SECRET_QUERY,
            "f": "https://shop.example/back?sig=abc123",
            "{authorization}i": "Token zzz",
            "{cookie}i": "sid=s3ss",
        }
    )
    fmt = '%(h)s "%(r)s" %(q)s "%(f)s" %({Authorization}i)s %({cookie}i)s %(a)s'
    message = _process(_record("gunicorn.access", fmt, (atoms,)))
    assert message == (
        f'10.0.0.1 "GET /cb?{REDACTED_QUERY} HTTP/1.1" {REDACTED_QUERY} '
        '"https://shop.example/back?sig=[REDACTED]" [REDACTED] [REDACTED] -'
    )


def test_hypercorn_atoms_are_redacted() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/cb",
        "query_string": SECRET_QUERY.encode(),
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"authorization", b"Token zzz")],
    }
    atoms = AccessLogAtoms(scope, {"status": 200, "headers": []}, 0.01)  # type: ignore[arg-type]
    fmt = '"%(R)s" %(Uq)s %(q)s %({authorization}i)s'
    message = _process(_record("hypercorn.access", fmt, (atoms,)))
    assert message == (
        f'"GET /cb?{REDACTED_QUERY} 1.1" /cb?{REDACTED_QUERY} {REDACTED_QUERY} [REDACTED]'
    )


@pytest.mark.parametrize(
    ("msg", "args", "expected"),
    [
        (
            "fetching %s",
            ("https://api.example/v1?api_key=k3y&n=1",),
            "fetching https://api.example/v1?api_key=[REDACTED]&n=1",
        ),
        (
            "redirect to https://idp.example/cb?code=c0de&state=s",
            (),
            "redirect to https://idp.example/cb?code=[REDACTED]&state=s",
        ),
        ("%s %d", ("GET /x?sig=abc HTTP/1.1", 3), "GET /x?sig=[REDACTED] HTTP/1.1 3"),
        ("what? a=b", (), "what? a=b"),  # a question mark in prose is not a query
        ("plain %s", ("text",), "plain text"),
    ],
)
def test_any_stdlib_message_loses_url_query_secrets(msg: str, args: Any, expected: str) -> None:
    assert _process(_record("third.party", msg, args)) == expected


def test_a_mapping_formatted_whole_is_kept() -> None:
    message = _process(_record("x", "payload %s at /cb?code=c0de", ({"n": 1, "k": "v"},)))
    assert message == "payload {'n': 1, 'k': 'v'} at /cb?code=[REDACTED]"


def test_a_message_that_cannot_be_rebuilt_keeps_getmessage_text() -> None:
    record = _record("x", "%s", ("/a?code=c0de",))
    record.msg = "%s"
    event = {"event": "/a?code=c0de", "_record": record, "positional_args": ("/a?code=c0de", 1)}
    out = StdlibQueryRedactor()(None, "info", event)
    assert out["event"] == "/a?code=[REDACTED]"


def test_server_access_lines_through_configure_logging(json_logs: io.StringIO) -> None:
    args = ("127.0.0.1:51000", "GET", f"/cb?{SECRET_QUERY}", "1.1", 200)
    logging.getLogger("uvicorn.access").info(UVICORN_FORMAT, *args)
    logging.getLogger("hypercorn.access").info("%s", f"GET /cb?{SECRET_QUERY}")
    atoms = SafeAtoms({"r": f"GET /cb?{SECRET_QUERY} HTTP/1.1"})
    logging.getLogger("gunicorn.access").info('"%(r)s"', atoms)
    logging.getLogger("some.lib").warning("calling https://h/x?%s", SECRET_QUERY)
    entries = lines(json_logs)
    assert [entry["logger"] for entry in entries] == [
        "uvicorn.access",
        "hypercorn.access",
        "gunicorn.access",
        "some.lib",
    ]
    for entry in entries:
        assert REDACTED_QUERY in entry["event"]
        assert "positional_args" not in entry
    for secret in SECRETS:
        assert secret not in json_logs.getvalue()
