"""Logs: one structlog + stdlib configuration, its processors, and the access log.

`configure_logging` installs JSON lines in production and console lines elsewhere, for
structlog events and stdlib records alike (`asgi_observe.logs.config`); the processors
that add trace ids and timestamps live in `asgi_observe.logs.processors`; and
`AccessLogMiddleware` writes one redacted line per request (`asgi_observe.logs.access`).
"""

from __future__ import annotations

from asgi_observe.logs.access import AccessLogMiddleware
from asgi_observe.logs.config import (
    StreamLogger,
    bind_request_id,
    clear_context,
    configure_logging,
    get_logger,
)
from asgi_observe.logs.processors import TraceContextAdder, UTCTimeStamper, json_dumps

__all__ = [
    "AccessLogMiddleware",
    "StreamLogger",
    "TraceContextAdder",
    "UTCTimeStamper",
    "bind_request_id",
    "clear_context",
    "configure_logging",
    "get_logger",
    "json_dumps",
]
