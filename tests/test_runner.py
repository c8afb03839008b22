"""The projection runner on real PostgreSQL, with a small projection of its own: events
counted per location, and every applied position recorded under a primary key, so an
event applied twice fails loudly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from conversations.database import create_async_engine
from conversations.projections import runner
from conversations.projections.base import BulkProjection, EventBatch, Tables
from conversations.projections.registry import PROJECTIONS
from conversations.store import StoredEvent, append_events, head_position
from tests.helpers import message, new_id
from tests.projection_support import (
    again,
    append_documents,
    at,
    hold_live,
    rebuild_in_one_pass,
    side_tables,
    table_rows,
)
from tests.test_store import new_event


class CountingProjection:
    """Per location: how many events up to the batch end (recomputed, so order free)."""

    tables: tuple[Table, ...]

    def __init__(self, suffix: str) -> None:
        self.name = f"test_counting_{suffix}"
        metadata = MetaData()
        self.counts = Table(
            f"test_counts_{suffix}",
            metadata,
            Column("location_id", Text, primary_key=True),
            Column("events", BigInteger, nullable=False),
        )
        self.applied = Table(
            f"test_applied_{suffix}",
            metadata,
            Column("position", BigInteger, primary_key=True, autoincrement=False),
        )
        self.tables = (self.counts, self.applied)
        self.metadata = metadata
        self.fail_after: int | None = None
        self.start = 0
        """Position the projection started from (a rebuild starts from 0)."""

    def apply(self, conn: sqlalchemy.Connection, batch: EventBatch, tables: Tables) -> None:
        if self.fail_after is not None and batch.end > self.fail_after:
            raise RuntimeError("the projection crashed")
        conn.execute(insert(tables[self.applied]), [{"position": e.position} for e in batch.events])
        locations = sorted({e.location_id for e in batch.events})
        rows = conn.execute(
            text(
                "SELECT location_id, count(*) AS n FROM events"
                " WHERE location_id = ANY(:l) AND position <= :end GROUP BY location_id"
            ),
            {"l": locations, "end": batch.end},
        )
        values = [{"location_id": r.location_id, "events": r.n} for r in rows]
        statement = pg_insert(tables[self.counts]).values(values)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["location_id"], set_={"events": statement.excluded.events}
            )
        )


@pytest.fixture
def projection(engine: sqlalchemy.Engine) -> Iterator[CountingProjection]:
    """A new projection that starts at the current head: the session's earlier events
    (other tests') are history it does not need to fold."""
    projection = CountingProjection(uuid.uuid4().hex[:8])
    projection.metadata.create_all(engine)
    start_at_head(engine, projection)
    yield projection
    projection.metadata.drop_all(engine)


def start_at_head(engine: sqlalchemy.Engine, projection: CountingProjection) -> None:
    """Its checkpoint at the newest event, where it starts."""
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
        projection.start = head_position(conn)
        conn.execute(
            text("UPDATE projection_checkpoints SET position = :p WHERE name = :n"),
            {"p": projection.start, "n": projection.name},
        )


def append(database_url: str, documents: list[dict[str, Any]]) -> None:
    async def work() -> None:
        engine = create_async_engine(database_url, pool_size=2, timeout=10)
        async with engine.begin() as conn:
            await append_events(conn, [new_event(d) for d in documents])
        await engine.dispose()

    asyncio.run(work())


def expected_counts(conn: sqlalchemy.Connection, until: int, after: int = 0) -> dict[str, int]:
    """Events per location up to `until`, for the locations with events after `after`."""
    rows = conn.execute(
        text(
            "SELECT location_id, count(*) AS n FROM events WHERE position <= :until"
            " AND location_id IN (SELECT location_id FROM events"
            " WHERE position > :after AND position <= :until)"
            " GROUP BY location_id"
        ),
        {"until": until, "after": after},
    )
    return {r.location_id: r.n for r in rows}


def counts(conn: sqlalchemy.Connection, projection: CountingProjection) -> dict[str, int]:
    return {r.location_id: r.events for r in conn.execute(projection.counts.select())}


def checkpoint(conn: sqlalchemy.Connection, name: str) -> int:
    value = conn.scalar(
        text("SELECT position FROM projection_checkpoints WHERE name = :n"), {"n": name}
    )
    return int(value or 0)


def assert_consistent(engine: sqlalchemy.Engine, projection: CountingProjection) -> int:
    """The projection's rows are exactly what the events up to its checkpoint give."""
    with engine.connect() as conn:
        position = checkpoint(conn, projection.name)
        assert counts(conn, projection) == expected_counts(conn, position, projection.start)
        applied = conn.scalar(text(f"SELECT count(*) FROM {projection.applied.name}"))
        in_range = conn.scalar(
            text("SELECT count(*) FROM events WHERE position > :s AND position <= :p"),
            {"s": projection.start, "p": position},
        )
        assert applied == in_range
    return position


@pytest.mark.smoke
def test_catch_up_applies_everything_once(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    append(database_url, [message() for _ in range(30)])
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
    assert runner.catch_up(engine, projection, batch_size=7) > 0
    assert runner.catch_up(engine, projection) == 0
    with engine.connect() as conn:
        head = head_position(conn)
    assert assert_consistent(engine, projection) == head


def test_a_crash_mid_catch_up_neither_skips_nor_repeats(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
        start = head_position(conn)
    location = new_id("loc")
    append(database_url, [message(locationId=location) for _ in range(40)])
    projection.fail_after = start + 20
    with pytest.raises(RuntimeError, match="crashed"):
        runner.catch_up(engine, projection, batch_size=6)
    stopped_at = assert_consistent(engine, projection)
    assert start < stopped_at <= start + 20
    projection.fail_after = None
    runner.catch_up(engine, projection, batch_size=6)
    assert assert_consistent(engine, projection) >= start + 40


_WORKER = """
import os, sys, time
from conversations.database import create_engine
from conversations.projections import runner
from tests.test_runner import CountingProjection
projection = CountingProjection(sys.argv[2])
engine = create_engine(
    sys.argv[1], connect_args={"options": "-c lock_timeout=20s -c statement_timeout=30s"}
)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    finished = os.path.exists(sys.argv[3])
    if runner.catch_up(engine, projection, batch_size=3) == 0 and finished:
        break
    time.sleep(0.01)
"""


def test_several_processes_catch_up_together(
    database_url: str,
    engine: sqlalchemy.Engine,
    projection: CountingProjection,
    tmp_path: Path,
) -> None:
    """Processes folding one projection while events keep coming: no event is applied
    twice (the primary key would refuse it) and none is skipped."""
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
    suffix = projection.name.removeprefix("test_counting_")
    finished = tmp_path / "finished"
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, database_url, suffix, str(finished)])
        for _ in range(3)
    ]
    for _ in range(10):
        append(database_url, [message() for _ in range(10)])
    finished.touch()
    try:
        assert [w.wait(timeout=150) for w in workers] == [0, 0, 0]
    finally:
        for worker in workers:
            worker.kill()
    runner.catch_up(engine, projection)
    with engine.connect() as conn:
        head = head_position(conn)
    assert assert_consistent(engine, projection) == head


def test_rebuild_while_events_arrive_switches_over_with_nothing_missing(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    append(database_url, [message() for _ in range(50)])
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
    runner.catch_up(engine, projection)
    with engine.begin() as conn:  # damage the live rows: the rebuild must not keep them
        conn.execute(text(f"UPDATE {projection.counts.name} SET events = -1"))
    stop = threading.Event()

    def keep_appending() -> None:
        while not stop.is_set():
            append(database_url, [message() for _ in range(5)])

    appender = threading.Thread(target=keep_appending)
    appender.start()
    seen: list[int] = []
    try:
        position = runner.rebuild(engine, [projection], seen.append, batch_size=500)
    finally:
        stop.set()
        appender.join()
    assert seen and seen == sorted(seen)
    projection.start = 0  # a rebuild folds the whole history
    with engine.connect() as conn:
        assert checkpoint(conn, projection.name) == position
        assert counts(conn, projection) == expected_counts(conn, position)
        names = set(sqlalchemy.inspect(conn).get_table_names())
    assert not any(name.endswith("__rebuild") for name in names)
    runner.catch_up(engine, projection)
    with engine.connect() as conn:
        assert assert_consistent(engine, projection) == head_position(conn)
        indexes = {
            r.indexname
            for r in conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = :t"),
                {"t": projection.counts.name},
            )
        }
    assert indexes == {f"{projection.counts.name}_pkey"}


def test_an_interrupted_rebuild_leaves_the_live_projection_untouched(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    append(database_url, [message() for _ in range(20)])
    with engine.begin() as conn:
        runner.ensure_checkpoints(conn, [projection])
    runner.catch_up(engine, projection)
    with engine.connect() as conn:
        before = counts(conn, projection), checkpoint(conn, projection.name)

    def interrupt(position: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.rebuild(engine, [projection], interrupt, batch_size=5)
    with engine.connect() as conn:
        assert (counts(conn, projection), checkpoint(conn, projection.name)) == before
        names = set(sqlalchemy.inspect(conn).get_table_names())
    assert not any(name.endswith("__rebuild") for name in names)


def test_the_switch_does_not_deadlock_with_a_read_of_several_tables(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    """A read holding one live table and then reading another (as a read of messages
    joins the timeline and the conversations' tables) while the rebuild's switch drops
    them one after the other: one of the two was killed by PostgreSQL's deadlock check
    (a 503 for the read, or a replay failing after its whole rebuild)."""
    append(database_url, [message() for _ in range(5)])
    failures: list[BaseException] = []

    def rebuild() -> None:
        try:
            runner.rebuild(engine, [projection])
        except BaseException as error:
            failures.append(error)

    switching = threading.Thread(target=rebuild)
    with engine.connect() as reader:
        reader.execute(text(f"SELECT count(*) FROM {projection.applied.name}"))  # held
        switching.start()
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"
        )
        for _ in range(500):  # the switch waits for the read's lock
            if reader.scalar(text(waiting), {"t": projection.applied.name}):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the rebuild never waited for the read")
        reader.execute(text(f"SELECT count(*) FROM {projection.counts.name}"))
        reader.commit()
    switching.join(30)
    assert not failures
    with engine.connect() as conn:
        assert checkpoint(conn, projection.name) == head_position(conn)


def test_verify_finds_a_corrupted_row(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    location = new_id("loc")
    append(database_url, [message(locationId=location) for _ in range(3)])
    runner.rebuild(engine, [projection])  # verify compares with the whole history
    projection.start = 0
    assert runner.verify(engine, projection) == []
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {projection.counts.name} SET events = 99 WHERE location_id = :l"),
            {"l": location},
        )
    differences = runner.verify(engine, projection)
    assert {(d.side, json.dumps(d.row, sort_keys=True)) for d in differences} == {
        ("live only", json.dumps({"events": 99, "location_id": location}, sort_keys=True)),
        ("rebuild only", json.dumps({"events": 3, "location_id": location}, sort_keys=True)),
    }


def test_two_rebuilds_of_one_projection_do_not_overlap(
    database_url: str, engine: sqlalchemy.Engine, projection: CountingProjection
) -> None:
    append(database_url, [message() for _ in range(3)])
    errors: list[BaseException] = []

    def nested(position: int) -> None:
        try:
            runner.rebuild(engine, [projection])
        except runner.ReplayBusy as error:
            errors.append(error)

    runner.rebuild(engine, [projection], nested, batch_size=1_000_000)
    assert errors and "another replay" in str(errors[0])


def test_catch_up_all_folds_projections_at_different_positions(
    database_url: str, engine: sqlalchemy.Engine
) -> None:
    ahead, behind = (
        CountingProjection(uuid.uuid4().hex[:8]),
        CountingProjection(uuid.uuid4().hex[:8]),
    )
    for projection in (ahead, behind):
        projection.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            runner.ensure_checkpoints(conn, [ahead, behind])
            start = head_position(conn)
            conn.execute(
                text("UPDATE projection_checkpoints SET position = :p WHERE name = ANY(:n)"),
                {"p": start, "n": [ahead.name, behind.name]},
            )
        ahead.start = behind.start = start
        append(database_url, [message() for _ in range(10)])
        runner.catch_up(engine, ahead)
        append(database_url, [message() for _ in range(10)])
        assert runner.catch_up_all(engine, [ahead, behind], batch_size=4) > 0
        with engine.connect() as conn:
            head = head_position(conn)
        assert assert_consistent(engine, ahead) == head
        assert assert_consistent(engine, behind) == head
    finally:
        for projection in (ahead, behind):
            projection.metadata.drop_all(engine)


class AppendingProjection(CountingProjection):
    """Counts, and while it folds a batch shorter than `full` appends `more` events
    (committed at once, once), as webhooks keep arriving while a worker folds."""

    def __init__(self, suffix: str, database_url: str, full: int, more: int) -> None:
        super().__init__(suffix)
        self.database_url, self.full, self.more = database_url, full, more

    def apply(self, conn: sqlalchemy.Connection, batch: EventBatch, tables: Tables) -> None:
        super().apply(conn, batch, tables)
        if self.more and len(batch.events) < self.full:
            more, self.more = self.more, 0
            append(self.database_url, [message() for _ in range(more)])


@pytest.mark.parametrize("stop_at_head", [True, False])
def test_catch_up_all_can_stop_at_the_head_it_reached(
    database_url: str, engine: sqlalchemy.Engine, stop_at_head: bool
) -> None:
    """The worker stops after a batch that reached the newest event (shorter than the
    batch size), so what arrived meanwhile waits for its next, paced fold; a full batch
    means more is waiting, and is followed at once."""
    projection = AppendingProjection(uuid.uuid4().hex[:8], database_url, full=4, more=3)
    projection.metadata.create_all(engine)
    try:
        start_at_head(engine, projection)
        append(database_url, [message() for _ in range(6)])
        batches = runner.catch_up_all(engine, [projection], batch_size=4, stop_at_head=stop_at_head)
        with engine.connect() as conn:
            head = head_position(conn)
        folded = assert_consistent(engine, projection)
        if stop_at_head:  # 4 (full), 2 (the head): the 3 appended meanwhile wait
            assert batches == 2
            assert folded == head - 3
        else:  # 4, 2, and at once the 3 appended meanwhile
            assert batches == 3
            assert folded == head
    finally:
        projection.metadata.drop_all(engine)


class CrashingMidway(CountingProjection):
    """Writes its rows for the batch, then crashes (while `crash` is set): what it wrote
    must not stay."""

    crash = True

    def apply(self, conn: sqlalchemy.Connection, batch: EventBatch, tables: Tables) -> None:
        super().apply(conn, batch, tables)
        if self.crash:
            raise RuntimeError("the projection crashed midway")


def status_of(engine: sqlalchemy.Engine, projection: CountingProjection) -> runner.ProjectionStatus:
    with engine.connect() as conn:
        return runner.status(conn, [projection])[0]


def test_catch_up_all_folds_on_past_a_projection_whose_fold_fails(
    database_url: str, engine: sqlalchemy.Engine
) -> None:
    """With `failures`, a projection whose fold fails is rolled back to its savepoint and
    stays at its checkpoint with the failure recorded there, while the others fold every
    event (in batches: the failing one is left out after its first). Without it, the
    failure is raised and nothing of the batch is kept. A fold that succeeds clears it."""
    failing = CrashingMidway(uuid.uuid4().hex[:8])
    healthy = CountingProjection(uuid.uuid4().hex[:8])
    for projection in (failing, healthy):
        projection.metadata.create_all(engine)
        start_at_head(engine, projection)
    try:
        append(database_url, [message() for _ in range(7)])
        failures: dict[str, runner.FoldFailed] = {}
        runner.catch_up_all(engine, [failing, healthy], batch_size=3, failures=failures)
        with engine.connect() as conn:
            head = head_position(conn)
            assert checkpoint(conn, failing.name) == failing.start
            assert conn.scalar(text(f"SELECT count(*) FROM {failing.applied.name}")) == 0
        assert assert_consistent(engine, healthy) == head
        assert list(failures) == [failing.name]
        assert isinstance(failures[failing.name].__cause__, RuntimeError)
        status = status_of(engine, failing)
        assert status.failure is not None and status.failing_since is not None
        assert status.failure.startswith(f"{failing.name} failed on events ({failing.start}, ")
        assert status.failure.endswith("RuntimeError: the projection crashed midway")
        assert status_of(engine, healthy).failure is None

        append(database_url, [message()])
        with pytest.raises(runner.FoldFailed, match="crashed midway"):
            runner.catch_up_all(engine, [failing, healthy])
        with engine.connect() as conn:
            assert checkpoint(conn, healthy.name) == head  # the whole batch rolled back

        failing.crash = False
        append(database_url, [message() for _ in range(4)])
        failures.clear()
        runner.catch_up_all(engine, [failing, healthy], batch_size=3, failures=failures)
        assert not failures
        with engine.connect() as conn:
            head = head_position(conn)
        assert assert_consistent(engine, failing) == assert_consistent(engine, healthy) == head
        cleared = status_of(engine, failing)
        assert cleared.failure is None and cleared.failing_since is None
    finally:
        for projection in (failing, healthy):
            projection.metadata.drop_all(engine)


@pytest.mark.parametrize("live", PROJECTIONS, ids=lambda p: p.name)
def test_a_live_batch_folded_twice_changes_nothing(
    database_url: str, engine: sqlalchemy.Engine, live: BulkProjection
) -> None:
    """A live batch's messages with no earlier event get their rows appended, not
    upserted (`_sql.insert_new`). Folded a second time (by hand beside a worker, say),
    their rows are there already: the primary key refuses the append, the batch is
    upserted as any other, and nothing is counted twice in the summaries."""
    location, contact, conversation = new_id("loc"), new_id("con"), new_id("cnv")
    same = {"locationId": location, "contactId": contact, "conversationId": conversation}

    def fold(events: list[StoredEvent], after: int) -> dict[str, list[tuple[Any, ...]]]:
        with engine.begin() as conn:
            hold_live(conn, live)
            live.apply(conn, EventBatch(events, events[-1].position, start=after), Tables())
        return table_rows(engine, live, Tables(), location)

    with engine.connect() as conn:
        before = head_position(conn)
    # The summaries' last message comes first, so the batch's messages join them as deltas.
    newest = append_documents(database_url, engine, [message(**same, dateAdded=at(13))])
    fold(newest, before)
    first = message(**same, dateAdded=at(9))
    documents = [first, again(first, status="read")]
    documents += [message(**same, dateAdded=at(10 + n)) for n in range(3)]
    events = append_documents(database_url, engine, documents)
    once = fold(events, newest[-1].position)
    assert fold(events, newest[-1].position) == once
    with side_tables(engine, live) as one_pass:
        rebuild_in_one_pass(engine, live, one_pass, newest + events)
        assert table_rows(engine, live, one_pass, location) == once
