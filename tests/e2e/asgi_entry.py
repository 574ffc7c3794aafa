"""The reference example as a module-level ``app``, for servers given a module path.

daphne takes ``module:attribute`` and has no factory option, so the example's
``create_app()`` runs here, at import, in the server process, reading its configuration
from the environment the test gave the server.
"""

from __future__ import annotations

from examples.baliblissed import create_app

app = create_app()

__all__ = ["app"]
