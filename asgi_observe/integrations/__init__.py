"""Optional integrations that name route templates from a framework's own router.

The core reads Starlette, FastAPI and Litestar templates from what their routers leave in
the ASGI scope, without importing them. Django and Quart keep the matched route on their
request objects instead, so each gets a small integration here that copies it into
``scope["asgi_observe.route"]`` (`asgi_observe.routes.ROUTE_SCOPE_KEY`) in the library's
form, ``/items/{item_id}``:

- `asgi_observe.integrations.django`: ``RouteTemplateMiddleware``, one line in
  ``MIDDLEWARE`` (extra ``asgi-observe[django]``).
- `asgi_observe.integrations.quart`: ``track_routes(app)`` (extra ``asgi-observe[quart]``).

Each module imports its framework at import time and raises an `ImportError` naming the
extra when it is missing; nothing else in the package imports them.
"""
