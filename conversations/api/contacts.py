"""Reads beyond HighLevel's API: a contact's messages across conversations,
and its channel summary."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
