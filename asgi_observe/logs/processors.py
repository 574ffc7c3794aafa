"""Log processors and the safe JSON serializer used by `asgi_observe.logs.config`.

Kept apart from the configuration code: these are the pieces every log line passes
through, small and independently testable.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from opentelemetry.trace import get_current_span
from structlog.typing import EventDict, WrappedLogger

from asgi_observe.pii import (
    REDACTED,
    is_sensitive_key,
    redact,
    redact_path,
    redact_query,
    redact_url_queries,
)

__all__ = [
    "ORJSON_OPTIONS",
    "StdlibQueryRedactor",
    "TraceContextAdder",
    "UTCTimeStamper",
    "json_dumps",
]


def _redacted_arg(value: object) -> object:
    """A stdlib message argument with the query of a request target or URL redacted."""
    if type(value) is not str or "?" not in value:
        return value
    if value.startswith("/"):  # uvicorn's path argument: everything after "?" is query
        return redact_path(value)
    return redact_url_queries(value)


class _RedactedAtoms(dict):  # type: ignore[type-arg]
    """A server's access-log atoms (gunicorn, hypercorn), read through redaction.

    ``%``-formatting looks each ``%(name)s`` up with ``__getitem__``, so the original
    mapping keeps its own rules (gunicorn's case-insensitive, ``-``-for-missing lookup)
    and only the values the format uses are redacted: ``q`` is the raw query, header
    and environment atoms (``{authorization}i``, ``{cookie}i``, ``{secret_key}e``) follow
    the sensitive-key rule, and request lines and referers lose their query secrets.
    """

    def __init__(self, atoms: Mapping[str, object]) -> None:
        super().__init__()
        self._atoms = atoms

    def __getitem__(self, key: str) -> object:
        value = self._atoms[key]
        if key == "q" and isinstance(value, str):
            return redact_query(value)
        if key.startswith("{") and is_sensitive_key(key[1:].rpartition("}")[0]):
            return REDACTED
        return _redacted_arg(value)


class StdlibQueryRedactor:
    """A ``foreign_pre_chain`` processor: stdlib messages lose the secrets of their URLs.

    Server access lines quote the request target (uvicorn's ``"GET /cb?code=...
    HTTP/1.1"``), and libraries log the URLs they call; a ``code``, ``key`` or
    ``X-Amz-Signature`` parameter is only recognisable as a secret inside a query. So
    before `asgi_observe.pii.PIIRedactor` sees the message, it is rebuilt from the
    record's format and arguments with each request target's query passed through
    `asgi_observe.pii.redact_query` (uvicorn's path argument, gunicorn's and hypercorn's
    ``q``, ``r`` and ``f`` atoms), and every URL or path with a query left in the text
    goes through `asgi_observe.pii.redact_url_queries`: the same redaction as the
    library's own access log. It needs ``ProcessorFormatter(pass_foreign_args=True)``
    for the arguments, and drops the ``positional_args`` key that adds.
    """

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        args = event_dict.pop("positional_args", None)
        record = event_dict.get("_record")
        event = event_dict.get("event")
        if args and isinstance(record, logging.LogRecord):
            redacted: object = args
            if isinstance(args, tuple):
                items = tuple(_redacted_arg(arg) for arg in args)
                if items != args:
                    redacted = items
            elif isinstance(args, Mapping) and "%(" in str(record.msg):
                # ``%(name)s`` lookups only: ``log("got %s", {"a": 1})`` formats the
                # mapping itself, and getMessage() already wrote it (redacted later)
                redacted = _RedactedAtoms(args)
            if redacted is not args:
                # On failure getMessage()'s text stays; it is redacted below all the same.
                with contextlib.suppress(Exception):
                    event = str(record.msg) % redacted
        if isinstance(event, str):
            event_dict["event"] = redact_url_queries(event)
        return event_dict


class TraceContextAdder:
    """A structlog processor adding ``trace_id`` and ``span_id`` of the current span.

    Only a valid span context is used (the ids are then 32 and 16 lowercase hex digits,
    as in W3C trace context); keys already present in the event are kept.
    """

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "span_id" in event_dict:  # the access log passes them explicitly
            return event_dict
        context = get_current_span().get_span_context()
        if context.is_valid:
            event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
        return event_dict


def _json_default(value: Any) -> Any:
    """Render what `json` cannot; must never raise (a raising default loses the line)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__qualname__}>"


def _make_encoder(**kwargs: Any) -> json.JSONEncoder:
    return json.JSONEncoder(
        **{"default": _json_default, "separators": (",", ":"), "allow_nan": False, **kwargs}
    )


ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
"""The options `json_dumps` gives orjson; a writer encoding a line itself uses them too."""


def json_dumps(value: Any, **kwargs: Any) -> str:
    """The serializer of the production renderer: orjson, with a fallback that renders
    anything.

    orjson (structlog's documented fast path) encodes the line; unknown objects go
    through a lenient default (or the caller's ``default``). What orjson refuses
    (integers beyond 64 bits, cycles, deep nesting) takes the standard library's path,
    and structures that one rejects too are sanitized with `redact` and dumped again.
    Output is ASCII (other characters are escaped as ``\\uXXXX``), so a stream with any
    encoding can take every line.
    """
    default = kwargs.get("default", _json_default)
    if len(kwargs) <= 1 and (not kwargs or "default" in kwargs):
        try:
            encoded = orjson.dumps(value, default=default, option=ORJSON_OPTIONS)
        except (TypeError, ValueError, RecursionError, OverflowError):
            pass
        else:
            if encoded.isascii():
                return encoded.decode("ascii")
            # Rare (names, messages in other scripts): re-escaped to ASCII, same content.
            return json.dumps(orjson.loads(encoded), separators=(",", ":"))
    return _stdlib_dumps(value, **kwargs)


def _stdlib_dumps(value: Any, **kwargs: Any) -> str:
    encoder = _make_encoder(**kwargs)
    try:
        return encoder.encode(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        pass
    try:
        return encoder.encode(redact(value))
    except Exception:
        return json.dumps({"event": "unrenderable log event", "level": "error"})


class UTCTimeStamper:
    """A structlog processor adding ``timestamp``: ISO-8601 UTC with microseconds and ``Z``.

    Equivalent to ``TimeStamper(fmt="iso", utc=True)``, but formats the date and time
    once per second instead of once per line.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        # The microseconds, 0 to 999999, zero-padded to six digits (as ``%06d``): zfill
        # costs less than %-formatting, on every line.
        event_dict["timestamp"] = self._prefix + str(int((now - second) * 1_000_000)).zfill(6) + "Z"
        return event_dict
