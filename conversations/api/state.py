"""What the app holds for its lifetime (built in the lifespan, never at import)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from conversations.ingest import Ingestor
from conversations.metrics import Metrics
from conversations.settings import Settings
from conversations.writer import GroupCommitWriter


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    writer: GroupCommitWriter
    ingestor: Ingestor
    metrics: Metrics


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.conversations
    return state
