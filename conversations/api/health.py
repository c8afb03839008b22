"""Liveness, readiness and metrics."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from conversations.api.problems import problem_response
from conversations.api.state import app_state
from conversations.deadline import within
from conversations.migrate import head_revision
from conversations.projections.registry import PROJECTIONS
from conversations.projections.runner import status as projection_status


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)

    async def migration() -> str | None:
        async with state.engine.connect() as conn:
            result = await conn.execute(text("SELECT version_num FROM alembic_version"))
            version: str | None = result.scalar_one_or_none()
            return version

    try:
        current = await within(migration(), state.settings.db_timeout)
    except Exception as error:
        return problem_response(
            503,
            "not_ready",
            "Not ready",
            f"database unreachable: {type(error).__name__}",
            headers={"Retry-After": str(state.settings.retry_after)},
        )
    head = head_revision()
    if current != head:
        return problem_response(
            503, "not_ready", "Not ready", f"migrations at {current}, head is {head}"
        )
    return JSONResponse({"status": "ready", "migration": current})


async def metrics(request: Request) -> Response:
    state = app_state(request)
    return PlainTextResponse(
        state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def projections(request: Request) -> Response:
    """How far behind each projection is (operators' view, like /metrics)."""
    state = app_state(request)
    with state.read_engine.connect() as conn:
        rows = projection_status(conn, PROJECTIONS)
    return JSONResponse(
        {
            "projections": [
                {
                    "name": row.name,
                    "position": row.position,
                    "head": row.head,
                    "behindEvents": row.lag_events,
                    "lagSeconds": round(row.lag_seconds, 3),
                    "updatedAt": row.updated_at.isoformat() if row.updated_at else None,
                }
                for row in rows
            ]
        }
    )
