"""What the app holds for its lifetime (built in the lifespan, never at import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from conversations.api.body_deadlines import BodyDeadlines
from conversations.api.cursors import Cursors
from conversations.ingest import Ingestor
from conversations.keys import KeyCache
from conversations.metrics import Metrics
from conversations.settings import Settings
from conversations.writer import GroupCommitWriter

if TYPE_CHECKING:  # page_cache reads the state: imported for the types only
    from conversations.api.page_cache import PageCache, ProjectionChanges


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    writer: GroupCommitWriter
    ingestor: Ingestor
    metrics: Metrics
    read_engine: Engine
    """Sync engine of the read API's sync endpoints (they run in a thread pool)."""
    read_pool: AsyncConnectionPool[Any]
    """psycopg's own async pool (autocommit) for the hot, async read endpoints: no ORM
    layer between a request and its one statement."""
    keys: KeyCache
    cursors: Cursors
    body_deadlines: BodyDeadlines
    """Bounds the time a webhook's body takes to arrive (`CONVERSATIONS_BODY_TIMEOUT`)."""
    pages: PageCache | None = None
    """Finished read pages (None: `CONVERSATIONS_READ_CACHE_MB=0`)."""
    changes: ProjectionChanges | None = None
    """What invalidates `pages`."""


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.conversations
    return state
