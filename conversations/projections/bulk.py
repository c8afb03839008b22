"""A rebuild in one pass: every event read once, every key folded once, rows sent by COPY.

Batch by batch (`apply`), a message or conversation touched by many batches is read and
folded again by each of them, so a rebuild would cost (history x batches). Here the events
up to a position are streamed through a server-side cursor *grouped by key* (all events of
one message, all unread updates of one conversation, in one group each), each group is
folded once with the same pure functions `apply` uses (`fold_message`, `latest_flags`), and
the rows each projection makes of the result (`BulkProjection.message_rows`/`flag_rows`,
the same row builders its `apply` upserts) are appended with COPY. The few other events
(merges) then go through `apply` in position order, and `finish` derives the summaries
from the complete working tables with the same statements `apply` uses for some keys.

Memory stays bounded whatever the store's size: one group and one buffer of rows at a
time (PostgreSQL sorts the stream, spilling to disk if it must). The result depends only
on the set of events, as `apply`'s does, so the two agree (tests compare them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from psycopg.rows import args_row
from sqlalchemy import Connection, Table, text

from conversations.messages import latest_flags
from conversations.payloads import MESSAGE_EVENT_TYPES
from conversations.projections._sql import copy_rows
from conversations.projections.base import BulkProjection, EventBatch, Row, Tables, fold_message
from conversations.store import FOLD_COLUMNS, StoredEvent, folded_event

UNREAD_UPDATE = "ConversationUnreadUpdate"
FETCH_ROWS = 5_000
"""Events per round trip of the server-side cursors."""
FLUSH_ROWS = 5_000
"""Rows buffered per table before a COPY."""
OTHER_BATCH = 5_000
"""Events per `apply` of the events that are neither messages nor unread updates."""

_COLUMNS = (
    "position, event_id, location_id, stream_id, version, event_type, message_id, "
    "occurred_at, recorded_at, payload, ''::bytea AS raw, metadata"
)
# Grouped by (location_id, message_id): the index on those columns gives this order.
_MESSAGE_EVENTS = f"""
    SELECT {FOLD_COLUMNS} FROM events
     WHERE message_id IS NOT NULL AND message_id <> ''
       AND position > %(after)s AND position <= %(until)s
     ORDER BY location_id, message_id
"""
_UNREAD_EVENTS = f"""
    SELECT {FOLD_COLUMNS} FROM events
     WHERE event_type = '{UNREAD_UPDATE}' AND position > %(after)s AND position <= %(until)s
     ORDER BY location_id, stream_id
"""
_OTHER_EVENTS = text(
    f"""
    SELECT {_COLUMNS} FROM events
     WHERE event_type <> ALL(CAST(:skipped AS text[]))
       AND position > :after AND position <= :until
     ORDER BY position LIMIT :limit
    """
)
_COUNT = text("SELECT count(*) FROM events WHERE position > :after AND position <= :until")

Progress = Callable[[int], None]


class _Writer:
    """Rows buffered per physical table, sent by COPY when a buffer fills."""

    def __init__(self, conn: Connection, sides: Mapping[str, Tables]) -> None:
        self._conn = conn
        self._sides = sides
        self._buffers: dict[str, tuple[Table, list[dict[str, Any]]]] = {}

    def add(self, projection: str, rows: Iterable[Row]) -> None:
        for live, row in rows:
            table = self._sides[projection][live]
            buffer = self._buffers.setdefault(table.name, (table, []))[1]
            buffer.append(row)
            if len(buffer) >= FLUSH_ROWS:
                self._flush(table.name)

    def _flush(self, name: str) -> None:
        table, rows = self._buffers[name]
        copy_rows(self._conn, table, rows)
        rows.clear()

    def close(self) -> None:
        for name in self._buffers:
            self._flush(name)


def _groups(
    conn: Connection, query: str, key: Callable[[StoredEvent], tuple[str, str]], **params: int
) -> Iterator[tuple[tuple[str, str], list[StoredEvent]]]:
    """The query's events (ordered by `key`) one group of equal keys at a time, through a
    server-side cursor in `conn`'s transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor(name="conversations_rebuild", row_factory=args_row(folded_event)) as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(query, params)
        for group_key, events in itertools.groupby(cursor, key=key):
            yield group_key, list(events)


def _message_key(event: StoredEvent) -> tuple[str, str]:
    return event.location_id, event.message_id or ""


def _stream_key(event: StoredEvent) -> tuple[str, str]:
    return event.location_id, event.stream_id


class _Counter:
    """Events done, reported as a position in (after, until] for the progress bar."""

    def __init__(self, progress: Progress | None, after: int, until: int, total: int) -> None:
        self._progress, self._after, self._until, self._total = progress, after, until, total
        self._done = 0
        self._reported = 0

    def add(self, events: int) -> None:
        self._done += events
        if self._progress is None or self._done - self._reported < FETCH_ROWS:
            return
        self._reported = self._done
        span = self._until - self._after
        position = self._after + span * min(self._done, self._total) // max(self._total, 1)
        self._progress(min(position, self._until - 1) if position > self._after else self._after)


def build(
    conn: Connection,
    projections: Sequence[BulkProjection],
    sides: Mapping[str, Tables],
    after: int,
    until: int,
    progress: Progress | None = None,
) -> None:
    """Fold the events in (after, until] into the (empty) tables `sides[name]` of each
    projection, in `conn`'s transaction. A rebuild passes after=0."""
    if not projections:
        return
    total = int(conn.scalar(_COUNT, {"after": after, "until": until}) or 0)
    counter = _Counter(progress, after, until, total)
    writer = _Writer(conn, sides)
    for key, events in _groups(conn, _MESSAGE_EVENTS, _message_key, after=after, until=until):
        counter.add(len(events))
        if not any(e.event_type in MESSAGE_EVENT_TYPES for e in events):
            continue  # `apply` folds a message only for its message events
        entry = fold_message(key, events)
        if entry is not None:
            for projection in projections:
                writer.add(projection.name, projection.message_rows(key, entry))
    for key, events in _groups(conn, _UNREAD_EVENTS, _stream_key, after=after, until=until):
        counter.add(len(events))
        latest = latest_flags(events)
        if latest is not None:
            for projection in projections:
                writer.add(projection.name, projection.flag_rows(key, latest))
    writer.close()
    skipped = sorted(MESSAGE_EVENT_TYPES | {UNREAD_UPDATE})
    position = after
    while True:
        params = {"skipped": skipped, "after": position, "until": until, "limit": OTHER_BATCH}
        others = [StoredEvent(**row._mapping) for row in conn.execute(_OTHER_EVENTS, params)]
        if not others:
            break
        position = others[-1].position
        counter.add(len(others))
        batch = EventBatch(others, until)
        for projection in projections:
            projection.apply(conn, batch, sides[projection.name])
    for projection in projections:
        projection.finish(conn, sides[projection.name])
