"""Django and Werkzeug patterns as the library's templates, and the missing-extra error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asgi_observe.integrations.templates import (
    MAX_TEMPLATE_LENGTH,
    django_route_template,
    name_route,
    werkzeug_rule_template,
)
from asgi_observe.routes import ROUTE_SCOPE_KEY, SUBROUTE_SCOPE_KEY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("", "/"),
        ("items/", "/items/"),
        ("items/<int:item_id>", "/items/{item_id}"),
        ("items/<item_id>", "/items/{item_id}"),
        ("orders/<slug:order_id>/lines/<int:line>", "/orders/{order_id}/lines/{line}"),
        ("files/<path:rest>", "/files/{rest}"),
        # re_path: named groups, anchors, escaped punctuation
        (r"^items/(?P<item_id>[0-9]+)/$", "/items/{item_id}/"),
        (r"^api/v(?P<version>[12])/", "/api/v{version}/"),
        (r"^feeds/(?P<name>[a-z(]+(?:-[a-z]+)*)\.json$", "/feeds/{name}.json"),
        (r"^files/(?P<p>[^)]+)$", "/files/{p}"),
        (r"^x/(?P<a>(?P<b>x)y)\Z", "/x/{a}"),
        (r"^price/(?P<amount>\d+\$)$", "/price/{amount}"),
        # an unnamed group stays as written: it is the app's pattern, not request data
        (r"^archive/([0-9]{4})/$", "/archive/([0-9]{4})/"),
        # include(): Django joins the routes of the levels into one
        (r"^api/items/<int:item_id>", "/api/items/{item_id}"),
        (r"api/items/(?P<item_id>\d+)$", "/api/items/{item_id}"),
        # an unbalanced group (not a valid regex) is left alone rather than mangled
        (r"^bad/(?P<x>[0-9]+", r"/bad/(?P<x>[0-9]+"),
    ],
)
def test_django_routes_become_templates(route: str, template: str) -> None:
    assert django_route_template(route) == template


@pytest.mark.parametrize(
    ("rule", "template"),
    [
        ("/", "/"),
        ("/items/<int:item_id>", "/items/{item_id}"),
        ("/items/<item_id>", "/items/{item_id}"),
        ("/static/<path:filename>", "/static/{filename}"),
        ("/<any(about, help):page>/<int(signed=True):n>", "/{page}/{n}"),
        ('/re/<regex("[a-z]+"):word>', "/re/{word}"),
    ],
)
def test_werkzeug_rules_become_templates(rule: str, template: str) -> None:
    assert werkzeug_rule_template(rule) == template


def test_templates_are_bounded_in_length() -> None:
    long_regex = "^" + "a" * 1000 + "/(?P<x>[0-9]+)$"
    assert len(django_route_template(long_regex)) == MAX_TEMPLATE_LENGTH
    assert len(werkzeug_rule_template("/" + "b" * 1000)) == MAX_TEMPLATE_LENGTH


def test_name_route_is_absolute_alone_and_relative_under_a_starlette_mount() -> None:
    alone: dict[str, object] = {"type": "http"}
    mounted: dict[str, object] = {"type": "http", "router": object()}

    name_route(alone, "/items/{item_id}")
    name_route(mounted, "/items/{item_id}")

    assert alone == {"type": "http", ROUTE_SCOPE_KEY: "/items/{item_id}"}
    assert mounted[SUBROUTE_SCOPE_KEY] == "/items/{item_id}"
    assert ROUTE_SCOPE_KEY not in mounted


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("asgi_observe.integrations.django", "django", "asgi-observe[django]"),
        ("asgi_observe.integrations.quart", "quart", "asgi-observe[quart]"),
    ],
)
def test_missing_framework_names_the_extra(module: str, framework: str, extra: str) -> None:
    """In a fresh interpreter where the framework cannot be imported; the core package
    imports no framework, so it still imports."""
    code = (
        "import sys\n"
        f"sys.modules[{framework!r}] = None\n"
        "import asgi_observe, asgi_observe.integrations\n"
        f"import {module}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert extra in result.stderr


def test_the_core_imports_no_framework() -> None:
    code = (
        "import sys, asgi_observe\n"
        "import asgi_observe.integrations, asgi_observe.integrations.templates\n"
        "found = sorted({m.split('.')[0] for m in sys.modules}"
        " & {'django', 'quart', 'starlette', 'fastapi', 'litestar', 'werkzeug', 'flask'})\n"
        "print(found)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
