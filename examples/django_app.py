"""A Django (>= 5) ASGI app, fully observed: ``uvicorn --factory examples.django_app:create_app``.

Django is configured in code (no settings module, no database). The one line of set-up
for route templates is ``RouteTemplateMiddleware`` in ``MIDDLEWARE``: the handler label,
span name and access-log ``route`` of ``/items/7`` are then ``/items/{item_id}``, read from
Django's ``path("items/<int:item_id>", ...)``.
"""

from __future__ import annotations

from typing import cast

from django.conf import settings as django_settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET

from asgi_observe import HealthApp, Settings, get_logger, instrument
from asgi_observe.types import ASGIApp

logger = get_logger(__name__)


@require_GET
def home(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


@require_GET
def item(request: HttpRequest, item_id: int) -> JsonResponse:
    # A sync view runs in a thread: the line still carries the request id, trace and span.
    logger.info("item read", item_id=item_id)
    return JsonResponse({"item_id": item_id})


async def order_line(request: HttpRequest, order_id: str, line: int) -> JsonResponse:
    return JsonResponse({"order_id": order_id, "line": line})


async def boom(request: HttpRequest) -> JsonResponse:
    msg = "the view failed"
    raise RuntimeError(msg)


urlpatterns = [
    path("", home),
    path("items/<int:item_id>", item),
    path("orders/<slug:order_id>/lines/<int:line>", order_line),
    path("boom", boom),
]


def configure_django() -> None:
    """Django's settings for this example, once per process (Django allows only one)."""
    if django_settings.configured:
        return
    django_settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-a-secret",  # noqa: S106 - an example, no sessions
        ALLOWED_HOSTS=["*"],  # a real service lists its host names
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["asgi_observe.integrations.django.RouteTemplateMiddleware"],
        # asgi_observe's configure_logging owns logging; Django adds no handlers of its own.
        LOGGING_CONFIG=None,
    )


def build_app() -> ASGIApp:
    configure_django()
    # django-stubs type the scope as dict and messages as Mapping: narrower than ASGIApp's.
    return cast(ASGIApp, get_asgi_application())


def create_app(settings: Settings | None = None) -> ASGIApp:
    return instrument(build_app(), settings, health=HealthApp(version="1.0.0"))
