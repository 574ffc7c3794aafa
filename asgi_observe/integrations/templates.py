"""Route patterns of Django and Werkzeug (Quart) rewritten as the library's templates.

Every framework's label should read alike, ``/items/{item_id}``: a leading slash and each
parameter as ``{name}``, whatever converter or regex constrained it. The functions are
pure string work with no framework import, memoised per pattern: the patterns are the
app's own, a fixed set, so the memo stays small.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from functools import lru_cache
from typing import Any

from asgi_observe.routes import ROUTE_SCOPE_KEY, SUBROUTE_SCOPE_KEY

__all__ = [
    "MAX_TEMPLATE_LENGTH",
    "django_route_template",
    "name_route",
    "werkzeug_rule_template",
]

MAX_TEMPLATE_LENGTH = 256
"""Templates are cut at this many characters: a long regex pattern must not make a label
(and every series and log line carrying it) arbitrarily large."""

# Django's path() syntax, as django.urls.resolvers reads it: <converter:name> or <name>
# (not the name of a regex group, "(?P<name>", which is rewritten before).
_DJANGO_PARAM = re.compile(r"(?<!\?P)<(?:[^>:]+:)?([^>]+)>")
# Werkzeug's rule syntax: <converter(arguments):name> or <name> (werkzeug.routing.rules).
_WERKZEUG_PARAM = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\(.*?\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")
_NAMED_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")
_ESCAPED_PUNCTUATION = re.compile(r"\\([^A-Za-z0-9])")


def _group_end(pattern: str, start: int) -> int:
    """The index just past the group opened at `start`, or -1 when it never closes.

    Escapes and character classes are skipped, so ``[)]`` and ``\\)`` do not close it.
    """
    depth = 0
    index = start
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            if pattern.startswith("]", index + 1):  # "[]...]": a leading ] is a literal
                index += 1
            elif pattern.startswith("^]", index + 1):
                index += 2
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return -1


def _named_groups_as_params(pattern: str) -> str:
    out: list[str] = []
    position = 0
    for match in _NAMED_GROUP.finditer(pattern):
        if match.start() < position:  # a group nested inside one already replaced
            continue
        end = _group_end(pattern, match.start())
        if end < 0:
            break
        out.append(pattern[position : match.start()])
        out.append("{" + match.group(1) + "}")
        position = end
    out.append(pattern[position:])
    return "".join(out)


@lru_cache(maxsize=1024)
def django_route_template(route: str) -> str:
    """Django's ``ResolverMatch.route`` as a template: ``items/<int:item_id>`` →
    ``/items/{item_id}``.

    Routes of ``re_path`` are regex text: named groups become ``{name}``, the ``^`` and
    ``$`` anchors go, escaped punctuation (``\\.``) is unescaped, and any other regex
    text (an unnamed group) stays as written. Django joins the patterns of nested
    ``include()`` into one route, so mixed routes are handled in one pass. The result is
    cut at `MAX_TEMPLATE_LENGTH` characters.
    """
    text = route.removeprefix("^")
    text = _named_groups_as_params(text)
    if text.endswith("\\Z"):
        text = text[:-2]
    elif text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1]
    text = _DJANGO_PARAM.sub(r"{\1}", text)
    text = _ESCAPED_PUNCTUATION.sub(r"\1", text)
    if not text.startswith("/"):
        text = "/" + text
    return text[:MAX_TEMPLATE_LENGTH]


@lru_cache(maxsize=1024)
def werkzeug_rule_template(rule: str) -> str:
    """A Werkzeug URL rule (Quart's ``request.url_rule.rule``) as a template:
    ``/items/<int:item_id>`` → ``/items/{item_id}``; cut at `MAX_TEMPLATE_LENGTH`."""
    text = _WERKZEUG_PARAM.sub(r"{\1}", rule)
    if not text.startswith("/"):
        text = "/" + text
    return text[:MAX_TEMPLATE_LENGTH]


def name_route(scope: MutableMapping[str, Any], template: str) -> None:
    """Leave `template` in `scope` where `asgi_observe.routes` reads it.

    An app served on its own (the usual case) names the absolute template
    (`ROUTE_SCOPE_KEY`). One mounted under a Starlette ``Mount`` (the outer router left
    ``scope["router"]``) names it relative to the mount (`SUBROUTE_SCOPE_KEY`), and the
    library prefixes the mount's own template: ``/legacy`` + ``/items/{item_id}``.
    """
    key = SUBROUTE_SCOPE_KEY if "router" in scope else ROUTE_SCOPE_KEY
    scope[key] = template
