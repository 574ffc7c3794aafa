"""MetricsMiddleware against starlette-exporter and prometheus-fastapi-instrumentator."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_observe import MetricsMiddleware
from bench.harness import compare, print_table


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[Route("/", item), Route("/items/{item_id}", item), Route("/users/{uid}", item)]
    )


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    return app


def main() -> None:
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware

    ours = starlette_app()
    ours.add_middleware(MetricsMiddleware, registry=CollectorRegistry())
    exporter = starlette_app()
    exporter.add_middleware(PrometheusMiddleware, group_paths=True)
    results = compare(
        {
            "bare Starlette": starlette_app(),
            "asgi_observe MetricsMiddleware": ours,
            "starlette-exporter PrometheusMiddleware": exporter,
        }
    )
    print_table("HTTP metrics on Starlette (GET /items/42)", results, baseline="bare Starlette")

    fast_ours = fastapi_app()
    fast_ours.add_middleware(MetricsMiddleware, registry=CollectorRegistry())
    fast_peer = fastapi_app()
    Instrumentator(registry=CollectorRegistry()).instrument(fast_peer)
    results = compare(
        {
            "bare FastAPI": fastapi_app(),
            "asgi_observe MetricsMiddleware": fast_ours,
            "prometheus-fastapi-instrumentator": fast_peer,
        }
    )
    print_table("HTTP metrics on FastAPI (GET /items/42)", results, baseline="bare FastAPI")


if __name__ == "__main__":
    main()
