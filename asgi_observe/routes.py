"""Route templates for labels, span names and access logs, with a bound on their number.

A label derived from the raw path is a cardinality bomb, so every piece of the stack asks
this module for the route *template* (``/items/{item_id}``) of a finished request. It is
read from what the framework's router left in the scope, because routing has happened by
the time the response starts and re-matching every route per request is what makes peer
libraries slow:

- Starlette / FastAPI: ``scope["route"]`` (the innermost matched route) and
  ``scope["router"]`` (the outermost router). Mount prefixes are recovered from an index
  of the router tree built once per router, so nested mounts and mounts with path
  parameters give the full template (``/org/{org}/things/{tid}``).
- Litestar: ``scope["path_template"]``.
- Any app (raw ASGI, Django, a mounted sub-app) can set ``scope["asgi_observe.route"]`` to
  an absolute template, or ``scope["asgi_observe.subroute"]`` to a template relative to the
  Starlette ``Mount`` it is served under.
- A user-supplied `RouteResolver` goes first when a middleware is given one.

Nothing here imports a framework: the router tree is read by duck typing, and a shape it
does not understand degrades to the fallback label and is reported once.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from asgi_observe.types import Scope

__all__ = [
    "OVERFLOW_LABEL",
    "ROUTE_SCOPE_KEY",
    "SUBROUTE_SCOPE_KEY",
    "UNMATCHED_LABEL",
    "LabelCap",
    "RouteResolver",
    "normalize_method",
    "resolve_route",
]

logger = logging.getLogger("asgi_observe")

UNMATCHED_LABEL = "none"
"""The shared handler value of requests no route matched (router 404/405)."""

OVERFLOW_LABEL = "other"
"""The handler value every template past the cap is folded into."""

ROUTE_SCOPE_KEY = "asgi_observe.route"
"""An app may set this scope key to the absolute route template it served."""

SUBROUTE_SCOPE_KEY = "asgi_observe.subroute"
"""A sub-app mounted under a Starlette ``Mount`` may set its template relative to the mount."""

_RESOLVED_KEY = "asgi_observe.resolved_route"
_NOT_FOUND = object()

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "OTHER"


class RouteResolver(Protocol):
    """A user hook: return the route template of a finished request, or None to defer."""

    def __call__(self, scope: Scope) -> str | None: ...


def normalize_method(method: object) -> str:
    """Fold methods outside RFC 9110's set into one value, so ``FOO`` cannot add series."""
    return method if isinstance(method, str) and method in KNOWN_METHODS else OTHER_METHOD


class LabelCap:
    """Bound the number of distinct values a label can take.

    The first `max_values` distinct values pass; later new ones become `overflow`. The
    check is one set lookup on the hot path; the lock is taken only to admit a new value.
    """

    def __init__(
        self,
        max_values: int = 200,
        *,
        overflow: str = OVERFLOW_LABEL,
        what: str = "route templates",
    ) -> None:
        if max_values < 1:
            msg = f"max_values must be at least 1, got {max_values}"
            raise ValueError(msg)
        self.max_values = max_values
        self.overflow = overflow
        self.what = what
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def bound(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.max_values:
                self._seen.add(value)
                return value
        if not self._warned:
            self._warned = True
            logger.warning(
                "more than %d distinct %s; further ones are reported as %r",
                self.max_values,
                self.what,
                self.overflow,
            )
        return self.overflow


def resolve_route(
    scope: Scope, resolver: RouteResolver | None = None, *, status: int | None = None
) -> str | None:
    """The route template of a finished request, or None when no route matched.

    Call it once the response has started: before that the router has not run. The
    framework result is cached in the scope so the access log, metrics and tracing
    middlewares of one request share a single resolution.
    """
    if resolver is not None:
        try:
            custom = resolver(scope)
        except Exception:
            _report_once("resolver", "the route resolver raised; using the built-in resolution")
        else:
            if custom is not None:
                return custom if isinstance(custom, str) else str(custom)
    cached = scope.get(_RESOLVED_KEY, _NOT_FOUND)
    if cached is not _NOT_FOUND:
        return cached  # type: ignore[no-any-return]
    template = peek_route(scope, status=status)
    scope[_RESOLVED_KEY] = template
    return template


def peek_route(scope: Scope, *, status: int | None = None) -> str | None:
    """Resolve without caching: safe on a request still in flight (used at scrape time)."""
    try:
        explicit = scope.get(ROUTE_SCOPE_KEY)
        if isinstance(explicit, str):
            return explicit
        route = scope.get("route")
        if route is not None:
            return _starlette_template(scope, route, status)
        template = scope.get("path_template")  # Litestar
        if isinstance(template, str) and template:
            return template
    except Exception:
        _report_once(
            "framework", "the route could not be read from the scope; labelled as unmatched"
        )
    return None


# --- Starlette / FastAPI ---------------------------------------------------------------


class _Entry:
    """Where one route object sits in the router tree."""

    __slots__ = ("mounted", "opaque", "template")

    def __init__(self, template: str, mounted: str, *, opaque: bool) -> None:
        self.template = template  # the full template at this place
        self.mounted = mounted  # the mount prefixes root_path holds when routed here
        self.opaque = opaque  # a Mount of an app without routes: the sub-app's paths follow


class _RouterIndex:
    """Maps id(route) to its full template; built once per top-level router."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.entries: dict[int, list[_Entry]] = {}
        self.keep: list[Any] = []  # holds the routes so their ids stay unique
        self._walk(getattr(router, "routes", ()), "", depth=0)

    def _walk(self, routes: Iterable[Any], prefix: str, depth: int) -> None:
        if depth > 32:  # a cyclic or absurdly deep tree: stop rather than recurse forever
            return
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:  # FastAPI >= 0.16x keeps included routers unflattened
                extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
                self._walk(getattr(included, "routes", ()), prefix + extra, depth + 1)
                continue
            path_format = getattr(route, "path_format", None)
            children = getattr(route, "routes", None) if hasattr(route, "app") else None
            if (
                isinstance(path_format, str)
                and path_format.endswith("/{path}")
                and children is not None
            ):
                mount_prefix = prefix + path_format[: -len("/{path}")]
                # An opaque mount's root_path includes its own prefix, hence mount_prefix twice.
                self._add(route, mount_prefix, mount_prefix, opaque=not children)
                if children:
                    self._walk(children, mount_prefix, depth + 1)
            elif isinstance(path_format, str):
                self._add(route, prefix + path_format, prefix, opaque=False)
            elif children:  # Host(...) and other prefix-less containers
                self._walk(children, prefix, depth + 1)

    def _add(self, route: Any, template: str, mounted: str, *, opaque: bool) -> None:
        self.keep.append(route)
        self.entries.setdefault(id(route), []).append(_Entry(template, mounted, opaque=opaque))


_indexes: dict[int, _RouterIndex] = {}
_indexes_lock = threading.Lock()
_reported: set[str] = set()


def _report_once(key: str, message: str) -> None:
    if key in _reported:
        return
    _reported.add(key)
    logger.warning("asgi_observe: %s", message, exc_info=True)


def _index_for(router: Any, route: Any) -> list[_Entry] | None:
    index = _indexes.get(id(router))
    if index is not None and index.router is router:
        found = index.entries.get(id(route))
        if found is not None:
            return found
    # First request on this router, or routes were added after the index was built.
    with _indexes_lock:
        index = _RouterIndex(router)
        if len(_indexes) > 64:  # routers of discarded apps (tests build many) must not pile up
            _indexes.clear()
        _indexes[id(router)] = index
    return index.entries.get(id(route))


_PARAM = re.compile(r"\{[^}]+\}")


def _prefix_matches(prefix: str, mounted_path: str) -> bool:
    pattern = (
        "^" + _PARAM.sub("[^/]+", re.escape(prefix).replace(r"\{", "{").replace(r"\}", "}")) + "$"
    )
    return re.match(pattern, mounted_path) is not None


def _starlette_template(scope: Scope, route: Any, status: int | None) -> str | None:
    if status == 405:
        methods = getattr(route, "methods", None)
        if methods and scope.get("method") not in methods:
            return None  # the router's 405, not the endpoint's: shares the unmatched label
    router = scope.get("router")
    entries = _index_for(router, route) if router is not None else None
    if not entries:
        path_format = getattr(route, "path_format", None)
        if not isinstance(path_format, str):
            _report_once(
                "shape", f"unrecognised route object {type(route).__name__}; labelled as unmatched"
            )
            return None
        _report_once(
            "index", f"route {path_format!r} not found under the router; its mount prefix is lost"
        )
        return path_format
    entry = entries[0]
    if len(entries) > 1:  # the same routes mounted twice (e.g. /v1 and /v2): pick by root_path
        mounted = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
        for candidate in entries:
            if _prefix_matches(candidate.mounted, mounted):
                entry = candidate
                break
    if entry.opaque:
        sub = scope.get(SUBROUTE_SCOPE_KEY)
        return entry.template + (sub if isinstance(sub, str) else "/{path}")
    return entry.template
