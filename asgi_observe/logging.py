"""The logging names under the import path the contract documents.

`asgi_observe.logging` predates the `asgi_observe.logs` package, where the code lives
(`asgi_observe.logs.config`); this module re-exports it so existing imports keep working.
"""

from __future__ import annotations

from asgi_observe.logs.config import *  # noqa: F403 - an alias of that module's API
from asgi_observe.logs.config import __all__ as __all__  # noqa: PLC0414 - re-exported
