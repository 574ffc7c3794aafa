"""Test helpers for logging: save and restore the process-wide logging state, and
a logger that records what the access log hands it (`RecordingLogger`).

`configure_logging` changes global state (structlog's configuration, the root logger,
server loggers); tests that call it must leave the process as they found it, because
other test modules run in the same interpreter.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from asgi_observe.logs.config import SERVER_LOGGERS, configure_logging
from asgi_observe.settings import Settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_servers = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in SERVER_LOGGERS
        for lg in [logging.getLogger(name)]
    }
    try:
        yield
    finally:
        structlog.configure(**saved_config)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, (handlers, level, propagate) in saved_servers.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@pytest.fixture
def json_logs(restore_logging: None) -> io.StringIO:
    """Production logging into a buffer; parse it with `lines()`."""
    stream = io.StringIO()
    configure_logging(Settings(environment="production", log_level="DEBUG"), stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of `stream` parsed as one JSON object (fails on any other line)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class RecordingLogger:
    """Collects (level, event, fields) like a structlog logger would receive them."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.records.append(("error", event, fields))
