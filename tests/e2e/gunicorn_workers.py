"""A uvicorn-worker class for gunicorn that sets uvicorn's ``root_path``.

gunicorn's own ``--root-path`` reaches only its built-in ASGI worker: ``UvicornWorker``
builds its uvicorn ``Config`` from a few gunicorn settings plus the class's
``CONFIG_KWARGS``, so the documented way to pass any other uvicorn option (``root_path``
included) is a subclass. This one reads the value from ``E2E_ROOT_PATH`` when gunicorn
imports it (``-k tests.e2e.gunicorn_workers.RootPathUvicornWorker``).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class RootPathUvicornWorker(UvicornWorker):  # type: ignore[misc]  # untyped base class
    """`UvicornWorker` serving under the ``root_path`` in ``E2E_ROOT_PATH``."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "root_path": os.environ.get("E2E_ROOT_PATH", ""),
    }


__all__ = ["RootPathUvicornWorker"]
