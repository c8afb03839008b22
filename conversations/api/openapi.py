"""GET /openapi.json: the OpenAPI 3.1 document of every endpoint."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
