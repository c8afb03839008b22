"""What the projection tests share: appending documents through the real store, payload
builders, side tables as a rebuild gets them, and the one-pass rebuild (`bulk.build`) of
just the events a test appended."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from sqlalchemy import MetaData, Table, select, text

from conversations.database import create_async_engine
from conversations.events import NewEvent, parse_json_object, to_new_event
from conversations.payloads import parse_payload
from conversations.projections import bulk, runner
from conversations.projections.base import BulkProjection, EventBatch, Projection, Tables
from conversations.store import StoredEvent, append_events, read_range

Append = Callable[[Sequence[dict[str, Any]]], list[StoredEvent]]
"""Append documents in this order and in one transaction; returns the stored events."""


def new_event(document: dict[str, Any]) -> NewEvent:
    raw = json.dumps(document).encode()
    parsed, raw_text = parse_json_object(raw)
    return to_new_event(parse_payload(parsed), parsed, raw, raw_text, {"source": "test"})


def append_documents(
    database_url: str, engine: sqlalchemy.Engine, documents: Sequence[dict[str, Any]]
) -> list[StoredEvent]:
    """Append through the store, in this order and in one transaction; returns the stored
    events as a fold reads them (duplicates absorbed by the store appear once)."""

    async def work() -> list[int]:
        async_engine = create_async_engine(database_url, pool_size=1, timeout=10)
        try:
            async with async_engine.begin() as conn:
                results = await append_events(conn, [new_event(d) for d in documents])
        finally:
            await async_engine.dispose()
        return [r.position for r in results]

    positions = set(asyncio.run(work()))
    with engine.connect() as conn:
        events = read_range(conn, min(positions) - 1, max(positions), 1_000_000)
    return [e for e in events if e.position in positions]


def hold_live(conn: sqlalchemy.Connection, projection: Projection) -> None:
    """Lock the projection's checkpoint row in `conn`'s transaction, as the runner does
    before it folds into the live tables: a test that folds into them itself then never
    runs at the same time as the session server's catch-up worker. (Folds of one table
    must not overlap: the summaries' deltas read the rows a fold is about to change.)"""
    runner.ensure_checkpoints(conn, [projection])
    conn.execute(
        text("SELECT position FROM projection_checkpoints WHERE name = :name FOR UPDATE"),
        {"name": projection.name},
    )


def rows_read_folding(
    engine: sqlalchemy.Engine, projection: Projection, events: Sequence[StoredEvent], table: Table
) -> int:
    """How many rows of `table` the projection reads to fold `events` as one live batch
    (the fold is committed): PostgreSQL's counters of the fold's own transaction
    (`pg_stat_xact_user_tables`: sequential scans and heap fetches), exact and not yet
    flushed to the shared statistics.

    The transaction's statements are planned as on tables too big to read whole: with
    statistics, and by index lookups (no sequential scans, no hash or merge joins, which
    read a whole small table), so the count is the rows the fold needs, not what the
    planner found cheapest on a test's small tables."""
    count = text(
        "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)"
        " FROM pg_stat_xact_user_tables WHERE relid = CAST(:table AS regclass)"
    )
    with engine.begin() as conn:
        hold_live(conn, projection)
        conn.execute(text(f"ANALYZE {conn.dialect.identifier_preparer.quote(table.name)}"))
        for method in ("seqscan", "hashjoin", "mergejoin"):
            conn.execute(text(f"SET LOCAL enable_{method} = off"))
        before = int(conn.scalar(count, {"table": table.name}) or 0)
        projection.apply(conn, EventBatch(events, events[-1].position), Tables())
        return int(conn.scalar(count, {"table": table.name}) or 0) - before


def at(hour: int, minute: int = 0) -> str:
    """A `dateAdded` on 2025-03-04, as HighLevel writes it."""
    return f"2025-03-04T{hour:02d}:{minute:02d}:00.000Z"


def time(hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, 4, hour, minute, tzinfo=UTC)


def unread(location: str, conversation: str, timestamp: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "ConversationUnreadUpdate",
        "locationId": location,
        "id": conversation,
        "timestamp": timestamp,
        "webhookId": str(uuid.uuid4()),
        **fields,
    }


def merge(location: str, old: str, new: str) -> dict[str, Any]:
    return {
        "type": "ConversationUpdate",
        "locationId": location,
        "oldConversationId": old,
        "newConversationId": new,
        "webhookId": str(uuid.uuid4()),
    }


def again(document: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Another delivery about the same thing (a new webhookId), with `fields` changed."""
    return {**document, "webhookId": str(uuid.uuid4()), **fields}


@contextmanager
def side_tables(engine: sqlalchemy.Engine, projection: BulkProjection) -> Iterator[Tables]:
    """Fresh, committed copies of the projection's tables, as a rebuild gets them."""
    suffix = uuid.uuid4().hex[:8]
    copies = MetaData()
    sides = {t.name: t.to_metadata(copies, name=f"{t.name}__{suffix}") for t in projection.tables}
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for live, side in sides.items():
            conn.exec_driver_sql(
                f"CREATE TABLE {quote(side.name)} (LIKE {quote(live)} INCLUDING ALL)"
            )
    try:
        yield Tables(sides)
    finally:
        with engine.begin() as conn:
            for side in sides.values():
                conn.exec_driver_sql(f"DROP TABLE {quote(side.name)}")


def rebuild_in_one_pass(
    engine: sqlalchemy.Engine,
    projection: BulkProjection,
    tables: Tables,
    events: Sequence[StoredEvent],
) -> None:
    """`bulk.build` over the positions of `events` (a test's own appends: nothing else
    appends meanwhile in a test session) into `tables`."""
    positions = [e.position for e in events]
    with engine.begin() as conn:
        bulk.build(
            conn, [projection], {projection.name: tables}, min(positions) - 1, max(positions)
        )


def table_rows(
    engine: sqlalchemy.Engine,
    projection: BulkProjection,
    tables: Tables,
    location: str | None = None,
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (of `location` only, when given), sorted, without the
    location id, which also reads as "<location>" inside values: folds of two locations
    compare."""
    found = {}
    with engine.connect() as conn:
        for live in projection.tables:
            table: Table = tables[live]
            query = select(*(c for c in table.columns if c.name != "location_id"))
            if location is not None:
                query = query.where(table.c.location_id == location)
            rows = [tuple(_anonymous(v, location) for v in row) for row in conn.execute(query)]
            found[live.name] = sorted(rows, key=repr)
    return found


def _anonymous(value: Any, location: str | None) -> Any:
    if location is not None and isinstance(value, str):
        return value.replace(location, "<location>")
    return value
