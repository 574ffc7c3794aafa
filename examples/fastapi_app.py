"""A FastAPI app, fully observed: ``uvicorn --factory examples.fastapi_app:create_app``."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp

router = APIRouter(prefix="/guides")


@router.get("/{guide_id}")
async def guide(guide_id: int) -> dict[str, int]:
    return {"guide_id": guide_id}


def build_app() -> FastAPI:
    # asgi_observe makes the request span and the HTTP metrics: FastAPI's own are off.
    app = FastAPI(title="fastapi example", telemetry={"tracing": False, "metrics": False})
    app.include_router(router, prefix="/api/v1")

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    return app


def create_app(settings: Settings | None = None) -> ASGIApp:
    return instrument(build_app(), settings)
