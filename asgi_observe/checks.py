"""The built-in readiness checks, importable as ``asgi_observe.checks``.

They live in `asgi_observe.health.checks`; this module is the public short name the
contract promises (``from asgi_observe import checks``; ``checks.database(engine)``).
"""

from __future__ import annotations

from asgi_observe.health.checks import (
    Check,
    CheckFunction,
    CheckResult,
    Status,
    callable,
    database,
    disk,
    http,
    redis,
)

__all__ = [
    "Check",
    "CheckFunction",
    "CheckResult",
    "Status",
    "callable",
    "database",
    "disk",
    "http",
    "redis",
]
