"""The reference service: a FastAPI backend shaped like BaliBlissed, fully observed.

Run it with ``make run`` or ``uvicorn --factory examples.baliblissed:create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI

from asgi_observe import Settings, instrument
from asgi_observe.types import ASGIApp


def build_api() -> FastAPI:
    api = FastAPI(title="BaliBlissed", version="1.0.0")

    @api.get("/destinations/{slug}")
    async def destination(slug: str) -> dict[str, str]:
        return {"slug": slug, "name": slug.replace("-", " ").title()}

    return api


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The uvicorn factory: configuration comes from the environment."""
    settings = Settings.from_env() if settings is None else settings
    return instrument(build_api(), settings)
