"""The raw event feed of the caller's locations: paged (GET /events) and
live (Server-Sent Events)."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
