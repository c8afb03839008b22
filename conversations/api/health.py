"""Liveness, readiness and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from conversations.api.problems import problem_response, schema_missing
from conversations.api.state import AppState, app_state
from conversations.deadline import within
from conversations.metrics import Gauge
from conversations.migrate import head_revision
from conversations.projections.registry import PROJECTIONS
from conversations.projections.runner import ProjectionStatus
from conversations.projections.runner import status as projection_status


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@dataclass(frozen=True)
class _Probe:
    """What readiness and the metrics read from the database in one bounded visit."""

    migration: str | None
    projections: list[ProjectionStatus]
    """Empty unless the schema is at head (older schemas may lack the tables)."""
    quarantine_pending: int | None


async def _probe(state: AppState, *, quarantine: bool) -> _Probe:
    head = head_revision()
    async with state.engine.connect() as conn:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
        version: str | None = result.scalar_one_or_none()
        if version != head:
            return _Probe(version, [], None)
        rows = await conn.run_sync(projection_status, PROJECTIONS)
        pending = None
        if quarantine:
            pending = int(await conn.scalar(_PENDING) or 0)
        return _Probe(version, rows, pending)


_PENDING = text("SELECT count(*) FROM quarantine WHERE status = 'pending'")


async def readyz(request: Request) -> Response:
    """Ready: the database answers within `CONVERSATIONS_DB_TIMEOUT`, the schema is at
    head, and no projection has left an event unapplied for longer than
    `CONVERSATIONS_READY_MAX_LAG` seconds. Otherwise 503, saying which."""
    state = app_state(request)
    try:
        probe = await within(_probe(state, quarantine=False), state.settings.db_timeout)
    except Exception as error:
        if schema_missing(error):
            return _not_ready(state, "the database has no schema: run `conversations migrate`")
        return _not_ready(state, f"database unreachable: {type(error).__name__}")
    head = head_revision()
    if probe.migration != head:
        return _not_ready(state, f"migrations at {probe.migration}, head is {head}")
    bound = state.settings.ready_max_lag
    behind = [row for row in probe.projections if row.lag_seconds > bound]
    if behind:
        detail = ", ".join(
            f"{row.name} is {row.lag_seconds:.1f} s ({row.lag_events} positions) behind"
            + (f" ({row.failure})" if row.failure else "")
            for row in behind
        )
        return _not_ready(state, f"projections behind more than {bound:g} s: {detail}")
    return JSONResponse(
        {
            "status": "ready",
            "migration": probe.migration,
            "projections": {row.name: round(row.lag_seconds, 3) for row in probe.projections},
        }
    )


def _not_ready(state: AppState, detail: str) -> Response:
    return problem_response(
        503,
        "not_ready",
        "Not ready",
        detail,
        headers={"Retry-After": str(state.settings.retry_after)},
    )


async def metrics(request: Request) -> Response:
    """Counters and histograms of this process, and gauges read from the database now
    (left out, with `conversations_database_reachable 0`, when it does not answer in
    time: a missing series is better than a stale one)."""
    state = app_state(request)
    reachable = Gauge(
        "conversations_database_reachable",
        "1 if the database answered this scrape within CONVERSATIONS_DB_TIMEOUT, else 0.",
    )
    gauges = [reachable, *_page_cache_gauges(state)]
    try:
        probe = await within(_probe(state, quarantine=True), state.settings.db_timeout)
    except Exception:
        reachable.set(0)
    else:
        reachable.set(1)
        gauges += _database_gauges(probe)
    return PlainTextResponse(
        state.metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def _page_cache_gauges(state: AppState) -> list[Gauge]:
    if state.pages is None or state.changes is None:
        return []
    return [
        Gauge(
            "conversations_read_cache_serving",
            "1 while kept read pages may be served (the listener for projection changes "
            "is connected and answering), else 0.",
        ).set(int(state.changes.hearing)),
        Gauge("conversations_read_cache_bytes", "Memory held by kept read pages (estimate).").set(
            state.pages.bytes
        ),
    ]


def _database_gauges(probe: _Probe) -> list[Gauge]:
    lag = Gauge(
        "conversations_projection_lag_seconds",
        "Age of the oldest event the projection has not applied (0 when caught up).",
        "projection",
    )
    behind = Gauge(
        "conversations_projection_behind_events",
        "Positions between the projection's checkpoint and the newest event.",
        "projection",
    )
    failing = Gauge(
        "conversations_projection_failing",
        "1 while the projection's worker keeps retrying a fold that fails (/projections says why).",
        "projection",
    )
    for row in probe.projections:
        lag.set(round(row.lag_seconds, 3), row.name)
        behind.set(row.lag_events, row.name)
        failing.set(1 if row.failure else 0, row.name)
    gauges = [lag, behind, failing] if probe.projections else []
    if probe.quarantine_pending is not None:
        gauges.append(
            Gauge(
                "conversations_quarantine_pending",
                "Bodies kept aside and not yet re-ingested (`conversations quarantine list`).",
            ).set(probe.quarantine_pending)
        )
    return gauges


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
                    "failure": row.failure,
                    "failingSince": (row.failing_since.isoformat() if row.failing_since else None),
                }
                for row in rows
            ]
        }
    )
