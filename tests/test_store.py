"""The event table on real PostgreSQL: appends, idempotency, versions, immutability and
gap-safe reading under concurrent writers."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conversations.database import create_async_engine
from conversations.events import NewEvent, dedup_key, parse_json_object, to_new_event
from conversations.payloads import parse_payload
from conversations.store import (
    FOLD_NO_ID,
    FOLD_NO_METADATA,
    FOLD_NO_TIME,
    StoredEvent,
    append_events,
    read_after,
    read_message_events,
    read_range,
    read_stream,
)
from tests.helpers import message, new_id

T = TypeVar("T")


def run(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_async_engine(database_url, pool_size=20, timeout=10)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def new_event(document: dict[str, Any]) -> NewEvent:
    raw = json.dumps(document).encode()
    parsed, raw_text = parse_json_object(raw)
    return to_new_event(parse_payload(parsed), parsed, raw, raw_text, {"source": "test"})


async def append(engine: AsyncEngine, *events: NewEvent) -> list[Any]:
    async with engine.begin() as conn:
        return await append_events(conn, list(events))


@pytest.mark.smoke
def test_append_assigns_positions_versions_and_keeps_bytes(
    database_url: str, engine: sqlalchemy.Engine
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    events = [
        new_event(message(locationId=location, conversationId=conversation, body=f"m{i}"))
        for i in range(3)
    ]

    async def work(writer: AsyncEngine) -> list[StoredEvent]:
        results = await append(writer, *events)
        assert [r.version for r in results] == [1, 2, 3]
        positions = [r.position for r in results]
        assert positions == sorted(positions)
        assert not any(r.duplicate for r in results)
        async with writer.connect() as conn:
            stored = await read_stream(conn, location, conversation)
            after = await read_after(conn, positions[0] - 1, limit=3)
        assert [s.raw for s in stored] == [e.raw for e in events]
        assert [s.payload["body"] for s in stored] == ["m0", "m1", "m2"]
        assert [s.position for s in after] == positions
        return stored

    stored = run(database_url, work)
    # What folds read: the same events, their keys and payloads, placeholders for the rest.
    with engine.connect() as conn:
        folded = read_range(conn, stored[0].position - 1, stored[-1].position, 10)
        of_message = read_message_events(conn, [(location, stored[1].message_id or "")], 2**62)
    lean = [
        replace(
            s,
            event_id=FOLD_NO_ID,
            occurred_at=None,
            recorded_at=FOLD_NO_TIME,
            raw=b"",
            metadata=FOLD_NO_METADATA,
        )
        for s in stored
    ]
    assert folded == lean
    assert of_message == [lean[1]]


def test_the_payload_is_decoded_from_the_raw_bytes_or_sent_scrubbed(database_url: str) -> None:
    """A payload equal to the body is sent once (as the raw bytes) and decoded by
    PostgreSQL; one that jsonb cannot take as sent (a \\u0000 escape) is sent scrubbed."""
    location = new_id("loc")

    def event(body: str) -> NewEvent:
        raw = json.dumps(message(locationId=location, body=body), ensure_ascii=False).encode()
        parsed, raw_text = parse_json_object(raw)
        return to_new_event(parse_payload(parsed), parsed, raw, raw_text, {"source": "test"})

    plain = event('h\u00e9llo \U0001f44b "q" \\ \n\t')
    nul = event("a\u0000b")
    assert plain.payload_is_raw and not nul.payload_is_raw

    async def work(engine: AsyncEngine) -> None:
        first, second = await append(engine, plain, nul)
        async with engine.connect() as conn:
            stored = {s.position: s for s in await read_after(conn, first.position - 1, 2)}
        assert stored[first.position].payload == json.loads(plain.raw)
        assert stored[first.position].raw == plain.raw
        assert stored[second.position].payload["body"] == "a\ufffdb"
        assert stored[second.position].raw == nul.raw

    run(database_url, work)


def test_duplicates_answer_the_original_position(database_url: str) -> None:
    document = message()
    reordered = json.loads(json.dumps(dict(reversed(list(document.items())))))
    reordered.pop("webhookId")
    document.pop("webhookId")
    first, second = new_event(document), new_event(reordered)
    assert first.dedup_key == second.dedup_key == dedup_key(document)

    async def work(engine: AsyncEngine) -> None:
        [original] = await append(engine, first)
        [again] = await append(engine, second)
        assert again.duplicate and again.position == original.position
        assert again.event_id == original.event_id
        async with engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT count(*) FROM events WHERE dedup_key = :k"), {"k": first.dedup_key}
            )
        assert count == 1

    run(database_url, work)


def test_the_same_conversation_id_in_two_locations_is_two_streams(database_url: str) -> None:
    conversation = new_id("cnv")
    a = new_event(message(conversationId=conversation))
    b = new_event(message(conversationId=conversation))

    async def work(engine: AsyncEngine) -> None:
        results = await append(engine, a, b)
        assert [r.version for r in results] == [1, 1]

    run(database_url, work)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET raw = ''::bytea",
        "UPDATE events SET location_id = 'x' WHERE position = {position}",
        "UPDATE events SET version = version WHERE false",
        "DELETE FROM events WHERE position = {position}",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ],
)
def test_events_cannot_be_changed(
    database_url: str, engine: sqlalchemy.Engine, statement: str
) -> None:
    event = new_event(message())
    [result] = run(database_url, lambda e: append(e, event))
    sql = statement.format(position=result.position)
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="immutable"), engine.begin() as conn:
        conn.exec_driver_sql(sql)
    with engine.connect() as conn:
        raw = conn.scalar(
            text("SELECT raw FROM events WHERE position = :p"), {"p": result.position}
        )
    assert raw == event.raw


def test_versions_cannot_be_forged(engine: sqlalchemy.Engine) -> None:
    """Whatever version a writer sends, the database counts the stream itself."""
    location, stream = new_id("loc"), new_id("cnv")
    with engine.begin() as conn:
        for forged in (7, 7, 1):
            conn.execute(
                text(
                    "INSERT INTO events (location_id, stream_id, version, event_type, payload,"
                    " raw, dedup_key) VALUES (:l, :s, :v, 'InboundMessage', '{}', '', :k)"
                ),
                {"l": location, "s": stream, "v": forged, "k": new_id("key")},
            )
        versions = conn.scalars(
            text("SELECT version FROM events WHERE location_id = :l ORDER BY position"),
            {"l": location},
        ).all()
    assert versions == [1, 2, 3]


def test_concurrent_writers_never_leave_a_gap_behind_a_tailing_reader(
    database_url: str,
) -> None:
    """Many writers commit concurrently, in transactions of random size and duration; a
    reader that only ever asks for "after the last position I saw" must see every one.

    Without the append lock, a writer that took a position and committed late lets the
    reader move past it (the classic failure this test exists to catch).
    """
    writers, batches_each = 16, 12
    location = new_id("loc")
    seen: list[int] = []
    done = asyncio.Event()

    async def writer(engine: AsyncEngine) -> list[int]:
        positions = []
        for _ in range(batches_each):
            events = [new_event(message(locationId=location)) for _ in range(random.randint(1, 5))]
            async with engine.begin() as conn:
                results = await append_events(conn, events)
                # Hold the transaction open after taking positions, as a slow writer would.
                await asyncio.sleep(random.uniform(0, 0.01))
            positions += [r.position for r in results]
        return positions

    async def reader(engine: AsyncEngine, start: int) -> None:
        cursor = start
        while True:
            finished = done.is_set()
            async with engine.connect() as conn:
                batch = await read_after(conn, cursor, limit=50)
            seen.extend(e.position for e in batch if e.location_id == location)
            if batch:
                cursor = batch[-1].position
            elif finished:
                return
            else:
                await asyncio.sleep(0.001)

    async def work(engine: AsyncEngine) -> tuple[list[int], list[int]]:
        async with engine.connect() as conn:
            start = await conn.scalar(text("SELECT coalesce(max(position), 0) FROM events"))
        tail = asyncio.create_task(reader(engine, int(start or 0)))
        written = await asyncio.gather(*(writer(engine) for _ in range(writers)))
        done.set()
        await tail
        return [p for ps in written for p in ps], seen

    written, read = run(database_url, work)
    assert len(written) >= writers * batches_each
    assert read == sorted(read), "the reader saw positions out of order"
    assert sorted(written) == read, "the reader skipped or repeated events"


def test_stream_versions_stay_gapless_under_concurrent_writers(
    database_url: str, engine: sqlalchemy.Engine
) -> None:
    location = new_id("loc")

    async def writer(engine: AsyncEngine) -> None:
        for _ in range(10):
            await append(engine, new_event(message(locationId=location, conversationId="one")))

    async def work(engine: AsyncEngine) -> None:
        await asyncio.gather(*(writer(engine) for _ in range(8)))

    run(database_url, work)
    with engine.connect() as conn:
        versions = conn.scalars(
            text("SELECT version FROM events WHERE location_id = :l ORDER BY position"),
            {"l": location},
        ).all()
    assert versions == list(range(1, 81))
