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
- Litestar: ``scope["path_template"]``; for an ASGI app mounted with
  ``@asgi(path, is_mount=True)``, the mount's path plus ``/{path}`` (``/static/{path}``),
  found from the app's public ``routes``.
- CORS preflights answered before routing (Starlette's ``CORSMiddleware``): the template
  of the route whose pattern the path matches, or the separate ``preflight`` label.
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
import sys
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from asgi_observe._asgi import relative_path
from asgi_observe.types import Scope

__all__ = [
    "OVERFLOW_LABEL",
    "PREFLIGHT_LABEL",
    "ROUTE_SCOPE_KEY",
    "SUBROUTE_SCOPE_KEY",
    "UNMATCHED_LABEL",
    "LabelCap",
    "RouteResolver",
    "is_preflight",
    "normalize_method",
    "resolve_route",
    "track_route",
    "unmatched_label",
]

logger = logging.getLogger("asgi_observe")

UNMATCHED_LABEL = "none"
"""The shared handler value of requests no route matched (router 404/405)."""

PREFLIGHT_LABEL = "preflight"
"""The handler value of CORS preflights whose path matches no route template."""

OVERFLOW_LABEL = "other"
"""The handler value every template past the cap is folded into."""

ROUTE_SCOPE_KEY = "asgi_observe.route"
"""An app may set this scope key to the absolute route template it served."""

SUBROUTE_SCOPE_KEY = "asgi_observe.subroute"
"""A sub-app mounted under a Starlette ``Mount`` may set its template relative to the mount."""

_RESOLVED_KEY = "asgi_observe.resolved_route"
_NOT_FOUND = object()
_MEMO_MAX_TEXT = 256  # longer request-derived keys are not memoised (bounded in bytes)

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


def track_route(scope: Scope) -> None:
    """Give the request a slot where `resolve_route` keeps its result; call before the app.

    The access log, metrics and tracing middlewares of one request then share a single
    resolution. The slot is put in the scope *before* the app runs and only its content
    changes later: writing a new scope key while the app runs would show up as a scope
    mutation to frameworks that compare scopes (Litestar warns about mounted ASGI apps
    "modifying the scope" on every such request).
    """
    if _RESOLVED_KEY not in scope:
        scope[_RESOLVED_KEY] = []


def resolve_route(
    scope: Scope, resolver: RouteResolver | None = None, *, status: int | None = None
) -> str | None:
    """The route template of a finished request, or None when no route matched.

    Call it once the response has started: before that the router has not run. When
    `track_route` was called for the request, the framework result is kept in its slot
    so the access log, metrics and tracing middlewares share a single resolution;
    nothing is ever written to the scope here.
    """
    if resolver is not None:
        try:
            custom = resolver(scope)
        except Exception:
            _report_once("resolver", "the route resolver raised; using the built-in resolution")
        else:
            if custom is not None:
                return custom if isinstance(custom, str) else str(custom)
    memo = scope.get(_RESOLVED_KEY)
    if memo:
        return memo[0]  # type: ignore[no-any-return]
    template = peek_route(scope, status=status)
    if isinstance(memo, list):
        memo.append(template)
    return template


def is_preflight(scope: Scope) -> bool:
    """Whether the request is a CORS preflight: ``OPTIONS`` with ``Access-Control-Request-Method``.

    The same test as Starlette's ``CORSMiddleware``, which answers such requests before
    any router runs.
    """
    if scope.get("method") != "OPTIONS":
        return False
    return any(
        bytes(name).lower() == b"access-control-request-method"
        for name, _ in scope.get("headers") or ()
    )


def unmatched_label(scope: Scope) -> str:
    """The handler label of a request without a route template.

    CORS preflights get `PREFLIGHT_LABEL`, so a browser's preflight traffic is not
    lumped with the router's 404s under `UNMATCHED_LABEL`; both labels are constants.
    """
    return PREFLIGHT_LABEL if is_preflight(scope) else UNMATCHED_LABEL


def peek_route(scope: Scope, *, status: int | None = None) -> str | None:
    """Resolve without caching: safe on a request still in flight (used at scrape time)."""
    try:
        explicit = scope.get(ROUTE_SCOPE_KEY)
        if isinstance(explicit, str):
            return explicit
        router = scope.get("router")
        if router is not None and ("route" in scope or "endpoint" in scope):
            return _starlette_template(scope, router, status)
        template = scope.get("path_template")  # Litestar
        if isinstance(template, str) and template:
            return template
        handler = scope.get("route_handler")  # Litestar: a mount has an empty template
        if handler is not None and getattr(handler, "is_mount", False) is True:
            return _litestar_mount_template(scope, handler)
        if router is None and scope.get("method") == "OPTIONS" and is_preflight(scope):
            return _preflight_template(scope)
    except Exception:
        _report_once(
            "framework", "the route could not be read from the scope; labelled as unmatched"
        )
    return None


# --- Starlette / FastAPI ---------------------------------------------------------------
#
# Starlette's routers set scope["route"] (the innermost matched route) and
# scope["endpoint"] (a Route's endpoint, or a Mount's app); FastAPI >= 0.16x sets
# scope["route"] only for its own APIRoutes, so plain Routes and Mounts under a FastAPI
# router are found by their endpoint. The outermost router is scope["router"].

_PARAM = re.compile(r"\{[^}]+\}")


def _prefix_regex(prefix: str) -> re.Pattern[str]:
    """A regex matching the concrete root_path part a mount-prefix template produces."""
    literal = re.escape(prefix).replace(r"\{", "{").replace(r"\}", "}")
    return re.compile("^" + _PARAM.sub("[^/]+", literal) + "$")


class _Entry:
    """One place of a route object in the router tree."""

    __slots__ = ("kind", "mounted", "mounted_regex", "route", "template")

    def __init__(self, route: Any, template: str, mounted: str, kind: str) -> None:
        self.route = route
        self.template = template  # the full template at this place
        self.mounted = mounted  # the mount prefixes root_path holds when routed here
        self.mounted_regex = _prefix_regex(mounted)
        # "route": an endpoint; "opaque": a Mount of an app without routes (its own paths
        # follow); "mount": a Mount of a router, final only when nothing inside matched.
        self.kind = kind


class _RouterIndex:
    """Every route of a top-level router with its full template; built once per router."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.size = _route_count(router)
        self.by_route: dict[int, list[_Entry]] = {}
        self.by_endpoint: dict[int, list[_Entry]] = {}
        self.opaque: list[_Entry] = []
        self.entries: list[_Entry] = []  # in the router's matching order
        self.recovered: dict[tuple[int, str], str | None] = {}
        self.preflight: list[tuple[re.Pattern[str], str]] | None = None  # built on first use
        self._walk(getattr(router, "routes", ()), "", depth=0)
        self.opaque.sort(key=lambda entry: len(entry.mounted), reverse=True)  # deepest first

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
                # A mount's root_path includes its own prefix, hence mount_prefix twice.
                kind = "mount" if children else "opaque"
                self._add(route, mount_prefix, mount_prefix, kind, endpoint=route.app)
                if children:
                    self._walk(children, mount_prefix, depth + 1)
            elif isinstance(path_format, str):
                endpoint = getattr(route, "endpoint", None)
                self._add(route, prefix + path_format, prefix, "route", endpoint=endpoint)
            elif children:  # Host(...) and other prefix-less containers
                self._walk(children, prefix, depth + 1)

    def _add(self, route: Any, template: str, mounted: str, kind: str, *, endpoint: Any) -> None:
        entry = _Entry(route, template, mounted, kind)
        self.entries.append(entry)
        self.by_route.setdefault(id(route), []).append(entry)
        if endpoint is not None:
            self.by_endpoint.setdefault(id(endpoint), []).append(entry)
        if kind == "opaque":
            self.opaque.append(entry)


def _route_count(router: Any) -> int:
    try:
        return len(router.routes)
    except Exception:
        return -1


_indexes: dict[int, _RouterIndex] = {}
_indexes_lock = threading.Lock()
_reported: set[str] = set()


def _report_once(key: str, message: str) -> None:
    if key in _reported:
        return
    _reported.add(key)
    logger.warning("asgi_observe: %s", message, exc_info=sys.exc_info()[0] is not None)


def _index_for(router: Any, *, stale: bool = False) -> _RouterIndex:
    """The index of `router`; rebuilt when `stale` and its route count changed."""
    index = _indexes.get(id(router))
    if (
        index is not None
        and index.router is router
        and (not stale or index.size == _route_count(router))
    ):
        return index
    with _indexes_lock:  # first request on this router, or routes were added since
        index = _RouterIndex(router)
        if len(_indexes) > 64:  # routers of discarded apps (tests build many) must not pile up
            _indexes.clear()
        _indexes[id(router)] = index
    return index


def _mounted_part(scope: Scope) -> str:
    root: str = scope.get("root_path", "")
    return root[len(scope.get("app_root_path", "")) :]


def _lookup(index: _RouterIndex, scope: Scope) -> list[_Entry] | None:
    route = scope.get("route")
    endpoint = scope.get("endpoint")
    if route is not None:
        # A Mount left in the scope by an outer router, while an inner FastAPI router
        # matched a plain route: the endpoint is the more specific of the two.
        stale = (
            endpoint is not None
            and getattr(route, "routes", None) is not None
            and getattr(route, "app", None) is not endpoint
        )
        if not stale:
            found = index.by_route.get(id(route))
            if found is None and endpoint is not None:
                found = _by_inclusion_copy(index, route, endpoint)
            return found
    return index.by_endpoint.get(id(endpoint)) if endpoint is not None else None


def _by_inclusion_copy(index: _RouterIndex, route: Any, endpoint: Any) -> list[_Entry] | None:
    """The entries of a route FastAPI copied when including its router.

    FastAPI >= 0.16x serves a websocket route of an included router through a copy built
    for that inclusion (its ``path_format`` holds the include prefixes) and leaves the
    copy in ``scope["route"]``. The original is in the index under the same endpoint,
    with a template ending with the copy's path (outer mount prefixes come first).
    """
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str):
        return None
    found = [
        entry
        for entry in index.by_endpoint.get(id(endpoint), ())
        if entry.kind == "route" and entry.template.endswith(path_format)
    ]
    return found or None


def _starlette_template(scope: Scope, router: Any, status: int | None) -> str | None:
    index = _index_for(router)
    entries = _lookup(index, scope)
    if entries is None:
        index = _index_for(router, stale=True)
        entries = _lookup(index, scope)
    if not entries:
        return _recover_prefix(index, scope)
    entry = entries[0]
    if len(entries) > 1:  # the same routes mounted twice (e.g. /v1 and /v2): pick by root_path
        mounted = _mounted_part(scope)
        entry = next((e for e in entries if e.mounted_regex.match(mounted)), entry)
    if entry.kind == "mount":
        return None  # a router was entered but nothing inside matched: the router's 404
    if status == 405:
        methods = getattr(entry.route, "methods", None)
        if methods and scope.get("method") not in methods:
            return None  # the router's 405, not the endpoint's: shares the unmatched label
    if entry.kind == "opaque":
        sub = scope.get(SUBROUTE_SCOPE_KEY)
        return entry.template + (sub if isinstance(sub, str) else "/{path}")
    return entry.template


def _recover_prefix(index: _RouterIndex, scope: Scope) -> str | None:
    """A route of a router hidden from the index (a sub-app wrapped in middleware).

    Its template is its own path format behind the deepest opaque mount whose prefix
    matches the root_path it was routed with.
    """
    route = scope.get("route")
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str):
        if route is not None:
            _report_once(
                "shape", f"unrecognised route object {type(route).__name__}; labelled as unmatched"
            )
        return None
    mounted = _mounted_part(scope)
    key = (id(route), mounted)
    found = index.recovered.get(key, _NOT_FOUND)
    if found is not _NOT_FOUND:
        return found  # type: ignore[return-value]
    template: str | None = path_format
    for entry in index.opaque:
        if entry.mounted_regex.match(mounted):
            template = entry.template + path_format
            break
    else:
        _report_once(
            "index", f"route {path_format!r} is not under the router; its mount prefix is unknown"
        )
    if len(mounted) <= _MEMO_MAX_TEXT:  # root_path holds path parameters: keep it bounded
        if len(index.recovered) >= 1024:
            index.recovered.clear()
        index.recovered[key] = template
    return template


# --- CORS preflights ---------------------------------------------------------------------
#
# Starlette's CORSMiddleware (FastAPI's too) answers a preflight before the router runs, so
# no route is in the scope. The route it targets is found by matching the path against
# the templates of the app's router (``scope["app"].router``, set by Starlette before its
# middleware runs); only preflights pay for it.

_CONVERTED_PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")


def _pattern_of(path: str) -> str:
    """A regex for a Starlette path: ``{x:path}`` spans segments, other parameters do not."""
    out: list[str] = []
    last = 0
    for match in _CONVERTED_PARAM.finditer(path):
        out.append(re.escape(path[last : match.start()]))
        out.append(".*" if match.group(2) == "path" else "[^/]+")
        last = match.end()
    out.append(re.escape(path[last:]))
    return "".join(out)


def _preflight_patterns(index: _RouterIndex) -> list[tuple[re.Pattern[str], str]]:
    patterns: list[tuple[re.Pattern[str], str]] = []
    for entry in index.entries:
        if entry.kind == "mount":  # its routes are entries of their own
            continue
        own = getattr(entry.route, "path", None)
        if not isinstance(own, str):
            own = entry.template[len(entry.mounted) :]
        prefix = _pattern_of(entry.mounted)
        if entry.kind == "opaque":  # an app of its own below the prefix
            regex = re.compile(f"{prefix}(?:/.*)?")
            patterns.append((regex, entry.template + "/{path}"))
        else:
            patterns.append((re.compile(prefix + _pattern_of(own)), entry.template))
    return patterns


def _preflight_template(scope: Scope) -> str | None:
    """The template of the route a CORS preflight targets, when the router can tell."""
    router = getattr(scope.get("app"), "router", None)
    if router is None or getattr(router, "routes", None) is None:
        return None
    index = _index_for(router, stale=True)
    patterns = index.preflight
    if patterns is None:
        patterns = index.preflight = _preflight_patterns(index)
    path = relative_path(scope)
    for regex, template in patterns:
        if regex.fullmatch(path):
            return template
    return None


# --- Litestar mounts --------------------------------------------------------------------
#
# For ``@asgi(path, is_mount=True)`` Litestar leaves an empty ``path_template`` and the
# handler in ``scope["route_handler"]``; the mount's full path (router prefixes included)
# is the ``path`` of the app's route holding that handler, read from ``app.routes``.

_litestar_mounts: dict[int, tuple[Any, dict[int, tuple[str, ...]]]] = {}


def _litestar_mount_paths(app: Any) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    for route in getattr(app, "routes", ()):
        handler = getattr(route, "route_handler", None)
        path = getattr(route, "path", None)
        if getattr(handler, "is_mount", False) is True and isinstance(path, str):
            found.setdefault(id(handler), []).append(path)
    # Longest first: the most specific mount wins when a handler has several paths.
    return {key: tuple(sorted(paths, key=len, reverse=True)) for key, paths in found.items()}


def _litestar_mount_template(scope: Scope, handler: Any) -> str | None:
    app = scope.get("litestar_app")
    cached = _litestar_mounts.get(id(app))
    if cached is None or cached[0] is not app or id(handler) not in cached[1]:
        with _indexes_lock:  # first request on this app, or handlers registered since
            if len(_litestar_mounts) > 64:
                _litestar_mounts.clear()
            cached = (app, _litestar_mount_paths(app))
            _litestar_mounts[id(app)] = cached
    paths = cached[1].get(id(handler))
    if not paths:
        _report_once(
            "litestar", "a Litestar mount was not found in app.routes; labelled as unmatched"
        )
        return None
    mount = paths[0]
    if len(paths) > 1:  # Litestar rewrote scope["path"]; raw_path still holds the request's
        raw = bytes(scope.get("raw_path") or b"").decode("latin-1")
        root = scope.get("root_path", "")
        if root and raw.startswith(root):
            raw = raw[len(root) :]
        mount = next((p for p in paths if raw == p or raw.startswith(p.rstrip("/") + "/")), mount)
    return mount.rstrip("/") + "/{path}"
