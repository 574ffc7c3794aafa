"""Django (>= 5) integration: route templates and view exceptions, as one middleware.

Django resolves the URL inside its own handler and keeps the result on the request
(``request.resolver_match``), where no ASGI middleware can see it. Add
`RouteTemplateMiddleware` to ``MIDDLEWARE`` and the handler label, span name and access
log ``route`` become the matched pattern in the library's form: ``items/<int:item_id>``
is labelled ``/items/{item_id}`` (see `django_route_template` for ``re_path`` patterns).

- A request no pattern matched (Django's 404) has no route: it shares the ``none`` label,
  as router 404s do on every framework.
- A 405 comes from the view (``require_http_methods``, a class-based view without the
  method), never from Django's URL resolver, which ignores methods: the route matched, so
  the 405 keeps its template, as a Starlette endpoint's own 405 does.
- Django answers a view's exception with a 500 itself, so it never reaches the tracing
  middleware; this middleware records it on the request span (a redacted ``exception``
  event, ``error.type``, status ERROR) when the response is a 5xx.

Sync and async stacks are both supported (the middleware is sync- and async-capable).
Under WSGI there is no ASGI scope and the middleware does nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from asgi_observe.integrations.templates import django_route_template, name_route
from asgi_observe.tracing import record_exception

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.http import HttpRequest, HttpResponseBase
except ImportError as exc:  # an explicit extra: say which one
    msg = "asgi_observe.integrations.django needs Django >= 5: pip install 'asgi-observe[django]'"
    raise ImportError(msg) from exc

__all__ = ["RouteTemplateMiddleware"]

_EXCEPTION_ATTRIBUTE = "_asgi_observe_exception"


class RouteTemplateMiddleware:
    """Name the request's route template in its ASGI scope; record a view's exception.

    Add ``"asgi_observe.integrations.django.RouteTemplateMiddleware"`` to ``MIDDLEWARE``
    (anywhere: the route is read from ``request.resolver_match`` after the response is
    built, so a middleware answering before the view does not hide it), and serve
    ``instrument(get_asgi_application(), settings)``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            # Django then awaits this middleware without a thread hop (its documented
            # pattern for a middleware that supports both modes).
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        response = self.get_response(request)
        self._finish(request, response)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        awaitable: Awaitable[HttpResponseBase] = self.get_response(request)
        response = await awaitable
        self._finish(request, response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Keep the view's exception; whether it is an error depends on the response
        Django makes of it (``Http404`` becomes a 404, which is not)."""
        setattr(request, _EXCEPTION_ATTRIBUTE, exception)

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponseBase) -> None:
        scope = getattr(request, "scope", None)
        if not isinstance(scope, MutableMapping):
            return  # WSGI: nothing of ours to tell
        match = request.resolver_match
        route = getattr(match, "route", None)
        if isinstance(route, str):
            name_route(scope, django_route_template(route))
        exception = getattr(request, _EXCEPTION_ATTRIBUTE, None)
        if isinstance(exception, BaseException) and response.status_code >= 500:
            record_exception(exception)
