"""`AccessLogMiddleware` under its earlier import path; the code is in `asgi_observe.logs.access`."""

from __future__ import annotations

from asgi_observe.logs.access import *  # noqa: F403 - an alias of that module's API
from asgi_observe.logs.access import __all__ as __all__  # noqa: PLC0414 - re-exported
