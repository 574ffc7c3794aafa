"""Quart integration: route templates from the URL rule, and exceptions on the span.

Quart matches the URL rule when it pushes the request context and keeps it on the request
(``request.url_rule``), where no ASGI middleware can see it. ``track_routes(app)`` connects
to Quart's documented signals for that app, once, at set-up:

- ``request_started`` / ``websocket_started`` (sent after routing, before any
  ``before_request`` function, so one that answers early does not hide the route): the
  rule becomes the template in the library's form, ``/items/<int:item_id>`` →
  ``/items/{item_id}`` (`werkzeug_rule_template`). Nothing is matched again: the cost
  is a dictionary lookup per request.
- ``got_request_exception`` / ``got_websocket_exception``: Quart turns an unhandled
  exception into a 500 itself (unless ``PROPAGATE_EXCEPTIONS``, or testing/debug mode,
  re-raises it), so it never reaches the tracing middleware; the exception is recorded
  on the request span (a redacted ``exception`` event, ``error.type``, status ERROR).
  When Quart re-raises, the tracing middleware records it, once.

Werkzeug's router answers 404 (no rule matches the path) and 405 (a rule matches the
path, not the method) with no ``url_rule``: both share the ``none`` label, as router
404/405s do on Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, cast

from asgi_observe.integrations.templates import name_route, werkzeug_rule_template
from asgi_observe.tracing import record_exception

try:
    from quart import Quart, request, websocket
    from quart.signals import (
        got_request_exception,
        got_websocket_exception,
        request_started,
        websocket_started,
    )
except ImportError as exc:  # an explicit extra: say which one
    msg = "asgi_observe.integrations.quart needs Quart: pip install 'asgi-observe[quart]'"
    raise ImportError(msg) from exc

__all__ = ["track_routes"]

logger = logging.getLogger("asgi_observe")
_reported: set[str] = set()


def track_routes(app: Quart) -> Quart:
    """Name `app`'s route templates for the observability stack; returns `app`.

    ``instrument(track_routes(app), settings)`` is the whole set-up. Calling it again on
    the same app changes nothing (a signal keeps one connection per receiver and sender).
    """
    request_started.connect(_name_request_route, sender=app)
    websocket_started.connect(_name_websocket_route, sender=app)
    got_request_exception.connect(_record_unhandled, sender=app)
    got_websocket_exception.connect(_record_unhandled, sender=app)
    return app


async def _name_request_route(sender: Quart, **_: Any) -> None:
    _name_route(request.url_rule, request.scope)


async def _name_websocket_route(sender: Quart, **_: Any) -> None:
    _name_route(websocket.url_rule, websocket.scope)


def _name_route(rule: Any, scope: Any) -> None:
    # A signal receiver that raises fails the request (blinker propagates it): never.
    try:
        if rule is not None:
            name_route(cast(MutableMapping[str, Any], scope), werkzeug_rule_template(rule.rule))
    except Exception:
        _report_once("route", "the Quart URL rule could not be read; labelled as unmatched")


async def _record_unhandled(sender: Quart, *, exception: BaseException, **_: Any) -> None:
    try:
        propagate = sender.config.get("PROPAGATE_EXCEPTIONS")
        if propagate is None:  # Quart's own default, read the way Quart.handle_exception does
            propagate = sender.testing or sender.debug
        if not propagate:
            record_exception(exception)
    except Exception:
        _report_once("exception", "the Quart exception could not be recorded on the span")


def _report_once(key: str, message: str) -> None:
    if key not in _reported:
        _reported.add(key)
        logger.warning("asgi_observe: %s", message, exc_info=True)
