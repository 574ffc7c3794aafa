"""Log processors and the safe JSON serializer used by `asgi_observe.logs.config`.

Kept apart from the configuration code: these are the pieces every log line passes
through, small and independently testable.
"""

from __future__ import annotations

import datetime
import json
import time
from decimal import Decimal
from typing import Any

from opentelemetry.trace import get_current_span
from structlog.typing import EventDict, WrappedLogger

from asgi_observe.pii import redact

__all__ = ["TraceContextAdder", "UTCTimeStamper", "json_dumps"]


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


JSON_ENCODER = _make_encoder()
# structlog's JSONRenderer passes its own ``default`` on every call; building an encoder
# per line cost as much as encoding it, so one is kept per ``default`` callable.
_encoders_by_default: dict[int, tuple[Any, json.JSONEncoder]] = {}


def json_dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that renders anything: the serializer of the production renderer.

    Unknown objects go through a lenient default; structures json rejects outright
    (non-string keys, cycles, NaN) are sanitized with `redact` and dumped again. Output
    is ASCII (other characters are escaped), so any stream encoding can take it.
    """
    if not kwargs:
        encoder = JSON_ENCODER
    elif len(kwargs) == 1 and "default" in kwargs:
        default = kwargs["default"]
        found = _encoders_by_default.get(id(default))
        if found is not None and found[0] is default:
            encoder = found[1]
        else:
            encoder = _make_encoder(default=default)
            if len(_encoders_by_default) >= 16:  # callers making a new callable per call
                _encoders_by_default.clear()
            _encoders_by_default[id(default)] = (default, encoder)
    else:
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

    __slots__ = ("_second", "_template")

    def __init__(self) -> None:
        self._second = -1
        self._template = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._template = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".%06dZ"
            self._second = second
        event_dict["timestamp"] = self._template % int((now - second) * 1_000_000)
        return event_dict
