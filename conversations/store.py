"""All SQL that touches the event table and the quarantine, and the translation of
driver errors into the store's own.

Appends are gap-safe because the database serialises appending transactions (see the
first migration and docs/ordering.md), so reading "everything after P" is a plain
`position > P`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import args_row
from sqlalchemy import Connection, TextClause, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from conversations.events import NewEvent


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or answered too slowly); try again later."""


class EventRejected(StoreError):
    """The database refused this one event's data (not a connectivity problem)."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    position: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: int
    event_id: uuid.UUID
    location_id: str
    stream_id: str
    version: int
    event_type: str
    message_id: str | None
    occurred_at: datetime | None
    recorded_at: datetime
    payload: dict[str, Any]
    raw: bytes
    metadata: dict[str, Any]


# In psycopg's placeholder style: the group-commit writer runs them on a psycopg connection
# of its own (`append_batch`); `text()` versions below for SQLAlchemy callers.
#
# A duplicate of an event stored earlier is left out before it reaches the INSERT: an
# identity position is taken for every row inserted, ON CONFLICT or not, so each absorbed
# redelivery left a hole (1,000 retries: the next position 1,001 further, and every
# "behind" count and progress total over positions inflated). One index probe per row: a
# LATERAL subquery with LIMIT is never turned into a join, so the probe stays an index
# lookup whatever the table's size when the statement was planned (a NOT EXISTS became a
# hash anti-join over the whole table on a new store). ON CONFLICT remains for a duplicate
# committed after this statement's snapshot was taken.
_INSERT_EVENTS_SQL = """
    INSERT INTO events (location_id, stream_id, event_type, message_id, occurred_at,
                        payload, raw, metadata, dedup_key)
    SELECT u.location_id, u.stream_id, u.event_type, u.message_id, u.occurred_at,
           coalesce(u.payload, convert_from(u.raw, 'UTF8'))::jsonb, u.raw, u.metadata::jsonb,
           u.dedup_key
      FROM unnest(CAST(%(location_id)s AS text[]), CAST(%(stream_id)s AS text[]),
                  CAST(%(event_type)s AS text[]), CAST(%(message_id)s AS text[]),
                  CAST(%(occurred_at)s AS timestamptz[]), CAST(%(payload)s AS text[]),
                  CAST(%(raw)s AS bytea[]), CAST(%(metadata)s AS text[]),
                  CAST(%(dedup_key)s AS text[]))
           WITH ORDINALITY AS u(location_id, stream_id, event_type, message_id, occurred_at,
                                payload, raw, metadata, dedup_key, ord)
      LEFT JOIN LATERAL (SELECT true AS stored FROM events e
                          WHERE e.dedup_key = u.dedup_key LIMIT 1) AS earlier ON true
     WHERE earlier.stored IS NULL
     ORDER BY u.ord
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key, position, event_id, stream_id, version
    """

_SELECT_BY_DEDUP_KEY_SQL = """
    SELECT dedup_key, position, event_id, stream_id, version
      FROM events WHERE dedup_key = ANY(CAST(%(keys)s AS text[]))
    """


def _sqlalchemy(sql: str) -> TextClause:
    """A psycopg-style statement (`%(name)s`) as SQLAlchemy text (`:name`)."""
    return text(re.sub(r"%\((\w+)\)s", r":\1", sql))


_INSERT_EVENTS = _sqlalchemy(_INSERT_EVENTS_SQL)
_SELECT_BY_DEDUP_KEY = _sqlalchemy(_SELECT_BY_DEDUP_KEY_SQL)

_EVENT_COLUMNS = (
    "position, event_id, location_id, stream_id, version, event_type, message_id, "
    "occurred_at, recorded_at, payload, raw, metadata"
)

_READ_AFTER = text(
    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > :after ORDER BY position LIMIT :limit"
)

_READ_STREAM = text(
    f"""
    SELECT {_EVENT_COLUMNS} FROM events
     WHERE location_id = :location_id AND stream_id = :stream_id
     ORDER BY version
    """
)


# What a fold reads of an event: the rest of `StoredEvent` is left as placeholders
# (`folded_event`). The projections fold payloads; decoding every event's id, times and metadata
# too cost a third of reading a batch (Python 12 -> 7.5 µs per event, PostgreSQL 5 -> 3.5).
FOLD_COLUMNS = "position, location_id, stream_id, version, event_type, message_id, payload"

# In psycopg's placeholder style: folds run them on the driver's cursor (`_fold_events`).
_READ_RANGE_SQL = f"""
    SELECT {FOLD_COLUMNS} FROM events
     WHERE position > %(after)s AND position <= %(until)s
     ORDER BY position LIMIT %(limit)s
    """

_READ_MESSAGES_SQL = f"""
    SELECT {FOLD_COLUMNS} FROM events
      JOIN unnest(CAST(%(locations)s AS text[]), CAST(%(messages)s AS text[])) AS k(l, m)
        ON events.location_id = k.l AND events.message_id = k.m
     WHERE events.position <= %(until)s
     ORDER BY position
    """

_READ_STREAMS_SQL = f"""
    SELECT {FOLD_COLUMNS} FROM events
      JOIN unnest(CAST(%(locations)s AS text[]), CAST(%(streams)s AS text[])) AS k(l, s)
        ON events.location_id = k.l AND events.stream_id = k.s
     WHERE events.event_type = %(event_type)s AND events.position <= %(until)s
     ORDER BY position
    """


def _fold_events(conn: Connection, sql: str, params: dict[str, Any]) -> list[StoredEvent]:
    """The events a fold statement selects (`FOLD_COLUMNS`), in `conn`'s transaction.

    Run on the driver's cursor and built by position: a fold reads thousands of events,
    and SQLAlchemy's result rows cost it more than psycopg's tuples, fetched all at once."""
    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    with raw.cursor(row_factory=args_row(folded_event)) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


FOLD_NO_ID = uuid.UUID(int=0)
FOLD_NO_TIME = datetime.min.replace(tzinfo=UTC)
FOLD_NO_METADATA: dict[str, Any] = {}
"""What the events a fold reads hold in place of their id, times and metadata (see
`FOLD_COLUMNS`): read-only; their payload and keys are the stored ones."""


def folded_event(
    position: int,
    location_id: str,
    stream_id: str,
    version: int,
    event_type: str,
    message_id: str | None,
    payload: dict[str, Any],
) -> StoredEvent:
    """An event as a fold reads it: a row of `FOLD_COLUMNS`, placeholders for the rest."""
    return StoredEvent(
        position,
        FOLD_NO_ID,
        location_id,
        stream_id,
        version,
        event_type,
        message_id,
        None,
        FOLD_NO_TIME,
        payload,
        b"",
        FOLD_NO_METADATA,
    )


def head_position(conn: Connection) -> int:
    """The highest committed position (0 for an empty store)."""
    return int(conn.scalar(text("SELECT coalesce(max(position), 0) FROM events")) or 0)


def read_range(conn: Connection, after: int, until: int, limit: int) -> list[StoredEvent]:
    """Events in (after, until] in position order, at most `limit`, as folds read them:
    the parsed payload and the keys, placeholders for the rest (`FOLD_COLUMNS`).
    Gap-safe: see the module doc."""
    return _fold_events(conn, _READ_RANGE_SQL, {"after": after, "until": until, "limit": limit})


def read_message_events(
    conn: Connection, keys: Sequence[tuple[str, str]], until: int
) -> list[StoredEvent]:
    """Every event of the given (location_id, message_id) messages up to `until`, as
    `read_range` reads them: what a projection needs to recompute those messages."""
    if not keys:
        return []
    params = {"locations": [k[0] for k in keys], "messages": [k[1] for k in keys], "until": until}
    return _fold_events(conn, _READ_MESSAGES_SQL, params)


def read_stream_events(
    conn: Connection, keys: Sequence[tuple[str, str]], event_type: str, until: int
) -> list[StoredEvent]:
    """Every event of type `event_type` in the given (location_id, stream_id) streams up to
    `until`, as `read_range` reads them: e.g. all ConversationUnreadUpdate events of
    some conversations, to recompute their flags from scratch."""
    if not keys:
        return []
    params = {
        "locations": [k[0] for k in keys],
        "streams": [k[1] for k in keys],
        "event_type": event_type,
        "until": until,
    }
    return _fold_events(conn, _READ_STREAMS_SQL, params)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event as the public feed shows it: the body exactly as received (`raw`) and the
    metadata as JSON text, both unparsed."""

    position: int
    event_id: uuid.UUID
    location_id: str
    stream_id: str
    version: int
    event_type: str
    occurred_at: datetime | None
    recorded_at: datetime
    raw: bytes
    metadata_json: str


# The positions to read come first (from the index alone); the rows are fetched after,
# keeping only as many as fit in `budget` bytes of raw bodies (the first row always).
_FEED_COLUMNS = (
    "e.position, e.event_id, e.location_id, e.stream_id, e.version, e.event_type, "
    "e.occurred_at, e.recorded_at, e.raw, e.metadata::text AS metadata_json"
)

_FEED_FETCH = f"""
    , sized AS (
        SELECT e.position,
               sum(octet_length(e.raw)) OVER (ORDER BY e.position) - octet_length(e.raw)
                 AS before
          FROM events e JOIN picked p ON p.position = e.position
    )
    SELECT {_FEED_COLUMNS}
      FROM events e JOIN sized s ON s.position = e.position
     WHERE s.before < :budget
     ORDER BY e.position
"""

# One ordered, limited index scan on (location_id, position) per location, then the
# first `limit` of them: PostgreSQL cannot walk one index in position order for several
# locations at once.
_FEED_IN_LOCATIONS = text(
    """
    WITH picked AS (
        SELECT p.position
          FROM unnest(CAST(:locations AS text[])) AS l(location_id)
         CROSS JOIN LATERAL (
               SELECT position FROM events
                WHERE events.location_id = l.location_id AND events.position > :after
                ORDER BY position LIMIT :limit
         ) AS p
         ORDER BY p.position LIMIT :limit
    )"""
    + _FEED_FETCH
)

_FEED_ALL = text(
    """
    WITH picked AS (
        SELECT position FROM events WHERE position > :after ORDER BY position LIMIT :limit
    )"""
    + _FEED_FETCH
)

FEED_PAGE_BYTES = 4 * 1024 * 1024
"""Raw bytes a feed page carries at most (beyond its first event)."""


def read_feed(
    conn: Connection,
    after: int,
    limit: int,
    locations: Sequence[str] | None,
    budget: int = FEED_PAGE_BYTES,
) -> list[FeedEvent]:
    """Events above position `after` in position order, at most `limit`, of `locations`
    only (of every location when None), with their raw bodies; fewer when the bodies
    would exceed `budget` bytes (but always the first). Gap-safe: see the module doc; a
    filter by location keeps that true, since the positions committed form a prefix."""
    if limit <= 0 or (locations is not None and not locations):
        return []
    params: dict[str, Any] = {"after": after, "limit": limit, "budget": budget}
    if locations is None:
        result = conn.execute(_FEED_ALL, params)
    else:
        result = conn.execute(_FEED_IN_LOCATIONS, {**params, "locations": sorted(set(locations))})
    return [FeedEvent(**row._mapping) for row in result]


# Built once (json.dumps with options builds an encoder per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _append_params(batch: Sequence[NewEvent]) -> dict[str, list[Any]]:
    """The INSERT's parameters: one array per column (one statement for the batch)."""
    return {
        "location_id": [e.location_id for e in batch],
        "stream_id": [e.stream_id for e in batch],
        "event_type": [e.event_type for e in batch],
        "message_id": [e.message_id for e in batch],
        "occurred_at": [e.occurred_at for e in batch],
        # NULL: the payload is the raw bytes as text (most webhooks: sent once, not twice).
        "payload": [None if e.payload_is_raw else e.payload_json for e in batch],
        "raw": [e.raw for e in batch],
        "metadata": [_COMPACT.encode(e.metadata) for e in batch],
        "dedup_key": [e.dedup_key for e in batch],
    }


# (dedup_key, position, event_id, stream_id, version), as both statements return them.
_ResultRow = Sequence[Any]


def _results(
    batch: Sequence[NewEvent], inserted: Iterable[_ResultRow], earlier: Iterable[_ResultRow]
) -> list[AppendResult]:
    """One result per event of `batch`, from the rows the INSERT returned and the rows of
    the duplicates' originals (both: dedup_key, position, event_id, stream_id, version)."""
    found: dict[str, AppendResult] = {}
    for key, position, event_id, stream_id, version in inserted:
        found[key] = AppendResult(position, event_id, stream_id, version, duplicate=False)
    for key, position, event_id, stream_id, version in earlier:
        found[key] = AppendResult(position, event_id, stream_id, version, duplicate=True)
    return [found[e.dedup_key] for e in batch]


def _missing(batch: Sequence[NewEvent], inserted: Sequence[_ResultRow]) -> list[str]:
    """The keys of the batch the INSERT skipped: duplicates of events stored earlier."""
    if len(inserted) == len(batch):
        return []
    keys = {row[0] for row in inserted}
    return [e.dedup_key for e in batch if e.dedup_key not in keys]


async def append_events(conn: AsyncConnection, batch: Sequence[NewEvent]) -> list[AppendResult]:
    """Append a batch in the caller's transaction, absorbing duplicates.

    The batch must not repeat a `dedup_key` (the caller folds those together). A
    duplicate of an event stored earlier answers with that event's position.
    """
    if not batch:
        return []
    inserted: list[_ResultRow] = list(await conn.execute(_INSERT_EVENTS, _append_params(batch)))
    missing = _missing(batch, inserted)
    earlier: list[_ResultRow] = []
    if missing:
        earlier = list(await conn.execute(_SELECT_BY_DEDUP_KEY, {"keys": missing}))
    return _results(batch, inserted, earlier)


async def append_batch(
    conn: psycopg.AsyncConnection[Any], batch: Sequence[NewEvent]
) -> list[AppendResult]:
    """`append_events` on a plain psycopg connection: the group-commit writer's path.

    The same statements (the INSERT prepared once per connection: its plan cannot go
    stale, the conflicts are found by the unique index), without SQLAlchemy in between:
    its connection checkout, execution context and rows cost as much CPU as the rest of
    the append (about 11 of 23 µs per webhook in batches of 28, measured by
    bench/_ingest_micro.py).
    """
    if not batch:
        return []
    cursor = await conn.execute(_INSERT_EVENTS_SQL, _append_params(batch), prepare=True)
    inserted: list[_ResultRow] = await cursor.fetchall()
    missing = _missing(batch, inserted)
    earlier: list[_ResultRow] = []
    if missing:
        # Not prepared: duplicates are rare, and a generic plan made while the table was
        # small could stay a sequential scan of every event as the store grows.
        cursor = await conn.execute(_SELECT_BY_DEDUP_KEY_SQL, {"keys": missing}, prepare=False)
        earlier = await cursor.fetchall()
    return _results(batch, inserted, earlier)


async def read_after(conn: AsyncConnection, after: int, limit: int = 1000) -> list[StoredEvent]:
    """Events with a position above `after`, in order. Gap-safe: see the module doc."""
    result = await conn.execute(_READ_AFTER, {"after": after, "limit": limit})
    return [StoredEvent(**row._mapping) for row in result]


async def read_stream(conn: AsyncConnection, location_id: str, stream_id: str) -> list[StoredEvent]:
    """One conversation's events in version order."""
    result = await conn.execute(_READ_STREAM, {"location_id": location_id, "stream_id": stream_id})
    return [StoredEvent(**row._mapping) for row in result]


_QUARANTINE = text(
    """
    INSERT INTO quarantine (source, reason, detail, errors, location_id, headers, body,
                            body_sha256)
    VALUES (:source, :reason, :detail, CAST(:errors AS jsonb), :location_id,
            CAST(:headers AS jsonb), :body, :body_sha256)
    ON CONFLICT (body_sha256) DO UPDATE
       SET attempts = quarantine.attempts + 1,
           last_received_at = clock_timestamp(),
           reason = EXCLUDED.reason,
           detail = EXCLUDED.detail,
           errors = EXCLUDED.errors,
           headers = EXCLUDED.headers
    RETURNING id
    """
)


# NUL fits no PostgreSQL text; a lone surrogate (a legal JSON escape) is not even UTF-8.
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")


def _clean(value: str) -> str:
    """Quarantine text must never fail to store: NUL and lone surrogates become U+FFFD."""
    return _UNSTORABLE_CHAR.sub("\ufffd", value)


async def quarantine_body(
    conn: AsyncConnection,
    *,
    body: bytes,
    reason: str,
    detail: str,
    errors: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str],
    source: str,
    location_id: str | None = None,
) -> int:
    """Keep a body we could not use, with why; returns its quarantine id.

    The same bytes again (HighLevel retries non-2xx answers) count as another attempt of
    the same row instead of a new one.
    """
    row = (
        await conn.execute(
            _QUARANTINE,
            {
                "source": source,
                "reason": reason,
                "detail": _clean(detail),
                "errors": _clean(json.dumps(list(errors), default=str)),
                "location_id": _clean(location_id) if location_id else None,
                "headers": _clean(json.dumps(dict(headers))),
                "body": body,
                "body_sha256": hashlib.sha256(body).hexdigest(),
            },
        )
    ).one()
    return int(row.id)


def is_unavailable(error: BaseException) -> bool:
    """True when an error means "the database is not there", as opposed to bad data.

    Anything that is not clearly about one event's data counts as unavailable, so a
    surprise answers 503 (and HighLevel retries) rather than quarantining good events.
    """
    if isinstance(error, sa_exc.DBAPIError):
        return not isinstance(error, sa_exc.DataError | sa_exc.IntegrityError)
    if isinstance(error, psycopg.Error):  # the group-commit writer's own connection
        return not isinstance(error, psycopg.DataError | psycopg.IntegrityError)
    # Text the driver cannot encode (a lone surrogate) is about the event, not the database.
    return not isinstance(error, UnicodeEncodeError)
