"""HighLevel-compatible conversation and message reads: the same paths,
parameters and response shapes as HighLevel's Conversations API."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
