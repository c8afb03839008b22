"""Running projections: live catch-up, rebuild into side tables with an atomic switch, and
verification against a fresh rebuild. One fold per projection (`apply`) serves all three.

Coordination goes through the database, so any number of `serve` processes and CLI
commands can run at once:
- A catch-up transaction locks its projection's checkpoint row (`FOR UPDATE SKIP
  LOCKED`): one worker folds a projection at a time; another one that finds the row
  locked leaves the work to it. The rows and the checkpoint commit together, so a batch
  is applied exactly once, whatever crashes.
- A rebuild folds every event into side tables without holding anything, then takes the
  same row lock (live workers wait), folds what arrived meanwhile, swaps the tables and
  moves the checkpoint in one transaction. Interrupted before that, it leaves the live
  tables untouched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, MetaData, Table, text
from sqlalchemy.exc import OperationalError

from conversations.projections import bulk, changes
from conversations.projections.base import BulkProjection, EventBatch, Projection, Tables
from conversations.store import head_position, read_range

log = logging.getLogger("conversations.projections")

CATCH_UP_BATCH = 1_000
REBUILD_BATCH = 5_000

Progress = Callable[[int], None]
"""Called with the position a rebuild has reached."""


class ReplayBusy(RuntimeError):
    """Another rebuild of the same projection is running."""


class FoldFailed(RuntimeError):
    """A projection's fold of the events in (after, until] raised `__cause__`: the
    projection stays at `after` until a fold of them succeeds."""

    def __init__(self, name: str, after: int, until: int) -> None:
        super().__init__(name, after, until)
        self.name, self.after, self.until = name, after, until

    def __str__(self) -> str:
        what = describe(self.__cause__) if self.__cause__ else "no cause recorded"
        return f"{self.name} failed on events ({self.after}, {self.until}]: {what}"


def describe(error: BaseException) -> str:
    """An error in one line: its type and the first line of its message (a database
    error's message goes on with the statement and its parameters)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    updated_at: datetime | None
    lag_seconds: float
    """Age of the oldest event not yet applied (0 when caught up)."""
    failure: str | None = None
    """The fold a worker keeps retrying, if one fails (see `record_failure`)."""
    failing_since: datetime | None = None

    @property
    def lag_events(self) -> int:
        """Positions behind the head (an upper bound: positions can have gaps)."""
        return max(0, self.head - self.position)


def ensure_checkpoints(conn: Connection, projections: Sequence[Projection]) -> None:
    for projection in projections:
        conn.execute(
            text(
                "INSERT INTO projection_checkpoints (name) VALUES (:name)"
                " ON CONFLICT (name) DO NOTHING"
            ),
            {"name": projection.name},
        )


def _checkpoint(conn: Connection, name: str, *, wait: bool) -> int | None:
    """Lock the projection's checkpoint row; None if another worker holds it."""
    lock = "FOR UPDATE" if wait else "FOR UPDATE SKIP LOCKED"
    position = conn.scalar(
        text(f"SELECT position FROM projection_checkpoints WHERE name = :name {lock}"),
        {"name": name},
    )
    return None if position is None else int(position)


def _fold(
    conn: Connection,
    projections: Sequence[Projection],
    sides: Mapping[str, Mapping[str, Table]],
    after: int,
    until: int,
    batch_size: int,
    max_batches: int | None = None,
) -> int:
    """Fold events in (after, until] batch by batch in `conn` into each projection's
    tables (`sides[name]`, or the live ones); returns the position reached."""
    while max_batches is None or max_batches > 0:
        if max_batches is not None:
            max_batches -= 1
        events = read_range(conn, after, until, batch_size)
        if not events:
            return after
        batch = EventBatch(events, events[-1].position, start=after)  # shared by all
        after = batch.end
        for projection in projections:
            projection.apply(conn, batch, Tables(sides.get(projection.name, {})))
    return after


def catch_up(engine: Engine, projection: Projection, batch_size: int = CATCH_UP_BATCH) -> int:
    """Apply every committed event the projection has not seen; returns how many batches.

    Returns at once if another worker is folding this projection: it will get there.
    """
    batches = 0
    while True:
        with engine.begin() as conn:
            position = _checkpoint(conn, projection.name, wait=False)
            if position is None:
                return batches
            events = read_range(conn, position, 2**63 - 1, batch_size)
            if not events:
                return batches
            end = events[-1].position
            _apply(conn, projection, EventBatch(events, end, start=position), position, None)
            _advance_all(conn, [projection.name], end)
            _announce(conn, {event.location_id for event in events})
        batches += 1


def catch_up_all(
    engine: Engine,
    projections: Sequence[Projection],
    batch_size: int = CATCH_UP_BATCH,
    *,
    stop_at_head: bool = False,
    failures: dict[str, FoldFailed] | None = None,
) -> int:
    """`catch_up` for several projections at once: each batch is read once and folded
    into every projection that is free, in one transaction (one commit, not one per
    projection). Projections another worker holds are left to it. Returns batches done.

    `stop_at_head`: return after a batch shorter than `batch_size` (it reached the newest
    event) instead of reading again at once. Under a steady stream of appends, reading
    again at once folds only what arrived during the last fold, and small batches cost
    more per event (see `CatchUpWorker._wait`).

    `failures`: fold each projection in a savepoint of its own, so that one whose fold
    fails does not hold the others back. It is rolled back to its savepoint, stays at its
    checkpoint with the failure recorded there (`record_failure`), is put in `failures`
    and left out of the rest of this call; the others go on. Without it, a failing fold
    raises `FoldFailed` and nothing of the batch is kept."""
    ordered = sorted(projections, key=lambda p: p.name)
    names = [p.name for p in ordered]
    failed: set[str] = set()
    batches = 0
    while names:
        with engine.begin() as conn:
            positions = _free_checkpoints(conn, names)
            mine = [p for p in ordered if p.name in positions]
            if not mine:
                return batches
            start = min(positions.values())
            events = read_range(conn, start, 2**63 - 1, batch_size)
            if not events:
                return batches
            end = events[-1].position
            shared = EventBatch(events, end, start=start)
            folded = []
            for projection in mine:
                position = positions[projection.name]
                batch = shared if position == start else _after(shared, position)
                if position < end and not _apply(conn, projection, batch, position, failures):
                    failed.add(projection.name)
                    continue
                folded.append(projection.name)
            _advance_all(conn, folded, end)
            _announce(conn, {event.location_id for event in events})
        batches += 1
        names = [name for name in names if name not in failed]
        if stop_at_head and len(events) < batch_size:
            return batches
    return batches


def _apply(
    conn: Connection,
    projection: Projection,
    batch: EventBatch,
    after: int,
    failures: dict[str, FoldFailed] | None,
) -> bool:
    """Fold `batch` into `projection` (see `catch_up_all`); False if it failed and was
    rolled back to its savepoint (with `failures` only)."""
    if failures is None:
        try:
            projection.apply(conn, batch, Tables())
        except Exception as error:
            raise FoldFailed(projection.name, after, batch.end) from error
        return True
    savepoint = conn.begin_nested()
    try:
        projection.apply(conn, batch, Tables())
    except Exception as error:
        if conn.invalidated:
            # The connection itself is gone (PostgreSQL restarted, the backend was
            # terminated, the network cut): no fault of this fold, and nothing more can
            # run on the connection. Raised as it is, so the worker says why it retries
            # (not SQLAlchemy's "Can't reconnect until invalid transaction is rolled
            # back", which recording the failure on the dead connection would raise).
            raise
        savepoint.rollback()
        failure = FoldFailed(projection.name, after, batch.end)
        failure.__cause__ = error
        failures[projection.name] = failure
        record_failure(conn, [projection.name], str(failure))
        return False
    savepoint.commit()
    return True


_FREE_CHECKPOINTS = text(
    "SELECT name, position FROM projection_checkpoints WHERE name = ANY(:names)"
    " ORDER BY name FOR UPDATE SKIP LOCKED"
)


def _free_checkpoints(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    """Lock the checkpoint rows no other worker holds (in name order, as every worker
    does); their positions by name. One statement for all: it runs for every batch."""
    rows = conn.execute(_FREE_CHECKPOINTS, {"names": list(names)})
    return {row.name: int(row.position) for row in rows}


def _announce(conn: Connection, locations: set[str] | None) -> None:
    """Tell readers, when this transaction commits, which locations it changed."""
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": changes.CHANNEL, "payload": changes.encode(locations)},
    )


def _advance_all(conn: Connection, names: Sequence[str], position: int) -> None:
    conn.execute(
        text(
            "UPDATE projection_checkpoints SET position = :position,"
            " updated_at = clock_timestamp(), failure = NULL, failing_since = NULL"
            " WHERE name = ANY(:names) AND position < :position"
        ),
        {"names": list(names), "position": position},
    )


def record_failure(conn: Connection, names: Sequence[str], failure: str) -> None:
    """Note on the checkpoints of `names` why they are not moving: `status` (and so the
    CLI, `/projections`, `/readyz`, `/metrics`) shows it until a fold moves them on
    (`_advance_all`). `failing_since` keeps the first failure of a run of them."""
    conn.execute(
        text(
            "UPDATE projection_checkpoints SET failure = :failure,"
            " failing_since = coalesce(failing_since, clock_timestamp())"
            " WHERE name = ANY(:names)"
        ),
        {"names": list(names), "failure": failure},
    )


def _after(batch: EventBatch, position: int) -> EventBatch:
    kept = [e for e in batch.events if e.position > position]
    return EventBatch(kept, batch.end, start=position if batch.start is not None else None)


def status(conn: Connection, projections: Sequence[Projection]) -> list[ProjectionStatus]:
    head = head_position(conn)
    rows = conn.execute(
        text(
            """
            SELECT n.name, coalesce(c.position, 0) AS position, c.updated_at,
                   c.failure, c.failing_since,
                   coalesce(extract(epoch FROM clock_timestamp() - (
                       SELECT recorded_at FROM events
                        WHERE position > coalesce(c.position, 0)
                        ORDER BY position LIMIT 1)), 0) AS lag
              FROM unnest(CAST(:names AS text[])) AS n(name)
              LEFT JOIN projection_checkpoints c ON c.name = n.name
            """
        ),
        {"names": [p.name for p in projections]},
    )
    found = {row.name: row for row in rows}
    result = []
    for projection in projections:
        row = found.get(projection.name)
        result.append(
            ProjectionStatus(
                projection.name,
                int(row.position) if row else 0,
                head,
                row.updated_at if row else None,
                float(row.lag) if row else 0.0,
                row.failure if row else None,
                row.failing_since if row else None,
            )
        )
    return result


# --- side tables ---------------------------------------------------------------------------


def _side_tables(projection: Projection, suffix: str) -> dict[str, Table]:
    metadata = MetaData()
    return {t.name: t.to_metadata(metadata, name=f"{t.name}__{suffix}") for t in projection.tables}


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _create_side_tables(conn: Connection, sides: dict[str, Table]) -> None:
    for live, side in sides.items():
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_quote(conn, side.name)}")
        conn.exec_driver_sql(
            f"CREATE TABLE {_quote(conn, side.name)}"
            f" (LIKE {_quote(conn, live)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING INDEXES INCLUDING GENERATED)"
        )


def _drop_side_tables(conn: Connection, sides: dict[str, Table]) -> None:
    for side in sides.values():
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_quote(conn, side.name)}")


_INDEX_NAMES = text(
    """
    SELECT c.relname AS name,
           i.indisprimary::text || i.indisunique::text || i.indkey::text
             || coalesce(pg_get_expr(i.indexprs, i.indrelid), '')
             || coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS shape
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = CAST(:table AS regclass)
    """
)


def _swap(conn: Connection, live: str, side: str) -> None:
    """Put `side` in the place of `live`, keeping the live index and constraint names
    (they are what the migrations and `alembic check` know)."""
    names = {row.shape: row.name for row in conn.execute(_INDEX_NAMES, {"table": live})}
    renames = [
        (row.name, names[row.shape])
        for row in conn.execute(_INDEX_NAMES, {"table": side})
        if row.shape in names
    ]
    conn.exec_driver_sql(f"DROP TABLE {_quote(conn, live)}")
    conn.exec_driver_sql(f"ALTER TABLE {_quote(conn, side)} RENAME TO {_quote(conn, live)}")
    for old, new in renames:
        # Renaming an index that backs a primary key or unique constraint renames the
        # constraint with it.
        conn.exec_driver_sql(f"ALTER INDEX {_quote(conn, old)} RENAME TO {_quote(conn, new)}")


SWITCH_LOCK_TIMEOUT_MS = 100
"""How long one try to take the live tables for a switch waits for the reads before
it lets them through; under PostgreSQL's `deadlock_timeout` (1 s by default)."""


def _lock_live(conn: Connection, tables: Sequence[str]) -> None:
    """Every live table a switch replaces, ACCESS EXCLUSIVE, before the first is dropped.

    A read holds its tables' locks until it ends and takes them in its own order (one
    statement reads the timeline and the conversations' tables together). Dropping the
    live tables one after the other while reads come and go could hold one the read
    waits for while waiting for one it holds: PostgreSQL's deadlock check then killed
    one of the two, a read (a 503) or the replay (after its whole rebuild). So the
    tables are taken in one try that holds nothing unless it gets them all: a try not
    done within SWITCH_LOCK_TIMEOUT_MS is rolled back (its locks released, the reads
    waiting behind it served) and made again."""
    names = ", ".join(_quote(conn, name) for name in tables)
    while True:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {SWITCH_LOCK_TIMEOUT_MS}")
                conn.exec_driver_sql(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
                conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
            return
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise


_LOCK_NOT_AVAILABLE = "55P03"


@contextmanager
def _exclusive(engine: Engine, purpose: str, projections: Sequence[Projection]) -> Iterator[None]:
    """Session-level advisory locks so two rebuilds of one projection never overlap."""
    names = sorted(p.name for p in projections)
    keys = [
        int.from_bytes(hashlib.sha256(f"{purpose}:{n}".encode()).digest()[:8], "big", signed=True)
        for n in names
    ]
    with engine.connect() as conn:
        taken = []
        try:
            for name, key in zip(names, keys, strict=True):
                if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
                    raise ReplayBusy(f"another {purpose} of projection {name!r} is running")
                taken.append(key)
            conn.commit()
            yield
        finally:
            for key in taken:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()


def _build(
    engine: Engine,
    projections: Sequence[Projection],
    suffix: str,
    until: int,
    progress: Progress | None,
    batch_size: int,
) -> tuple[dict[str, dict[str, Table]], int]:
    """Fresh side tables folded up to `until`; memory stays bounded whatever the store's
    size. Projections that support it are filled in one pass (`bulk.build`: each key
    folded once, in one transaction); any other one batch by batch, a committed batch at
    a time, every event read once for all of them."""
    sides = {p.name: _side_tables(p, suffix) for p in projections}
    with engine.begin() as conn:
        for tables in sides.values():
            _create_side_tables(conn, tables)
    in_bulk = [p for p in projections if isinstance(p, BulkProjection)]
    batched = [p for p in projections if not isinstance(p, BulkProjection)]
    if in_bulk:
        with engine.begin() as conn:
            bulk.build(
                conn,
                in_bulk,
                {p.name: Tables(sides[p.name]) for p in in_bulk},
                0,
                until,
                None if batched else progress,
            )
        if not batched:
            if progress:
                progress(until)
            return sides, until
    position = 0
    while position < until:
        with engine.begin() as conn:
            reached = _fold(conn, batched, sides, position, until, batch_size, max_batches=1)
        if reached == position:
            break
        position = reached
        if progress:
            progress(position)
    return sides, max(position, until) if in_bulk else position


def _drop_all(engine: Engine, projections: Sequence[Projection], suffix: str) -> None:
    with engine.begin() as conn:
        for projection in projections:
            _drop_side_tables(conn, _side_tables(projection, suffix))


def rebuild(
    engine: Engine,
    projections: Sequence[Projection],
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
) -> int:
    """Rebuild projections from the first event while the live ones keep serving, then
    switch all of them over in one transaction. Returns the position they start from."""
    ordered = sorted(projections, key=lambda p: p.name)  # one lock order: no deadlock
    with _exclusive(engine, "replay", ordered):
        with engine.begin() as conn:
            ensure_checkpoints(conn, ordered)
            head = head_position(conn)
        try:
            sides, position = _build(engine, ordered, "rebuild", head, progress, batch_size)
            with engine.begin() as conn:
                for projection in ordered:  # live workers wait from here
                    _checkpoint(conn, projection.name, wait=True)
                # Up to the head as it is now: what commits later is the live workers'
                # (chasing a steady stream of appends here could go on for ever).
                head = head_position(conn)
                position = _fold(conn, ordered, sides, position, head, batch_size)
                _lock_live(conn, [live for p in ordered for live in sides[p.name]])
                for projection in ordered:
                    for live, side in sides[projection.name].items():
                        _swap(conn, live, side.name)
                    conn.execute(
                        text(
                            "UPDATE projection_checkpoints"
                            " SET position = :position, updated_at = clock_timestamp(),"
                            " failure = NULL, failing_since = NULL"
                            " WHERE name = :name"
                        ),
                        {"name": projection.name, "position": position},
                    )
                _announce(conn, None)  # every table was replaced
        except BaseException:
            _drop_all(engine, ordered, "rebuild")
            raise
    if progress:
        progress(position)
    log.info(
        "projections rebuilt",
        extra={"projections": [p.name for p in ordered], "position": position},
    )
    return position


@dataclass(frozen=True)
class Difference:
    table: str
    side: str
    """"live only": a row the live table has and a rebuild does not; "rebuild only": the reverse."""
    row: dict[str, object]


def verify(
    engine: Engine,
    projection: Projection,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
    limit: int = 20,
) -> list[Difference]:
    """Rebuild aside up to the live checkpoint and compare, row for row; live tables are
    not touched. Returns at most `limit` differences per table and direction."""
    with _exclusive(engine, "verify", [projection]):
        with engine.begin() as conn:
            ensure_checkpoints(conn, [projection])
            start = _checkpoint(conn, projection.name, wait=True) or 0
        differences: list[Difference] = []
        try:
            sides, position = _build(engine, [projection], "verify", start, progress, batch_size)
            with engine.begin() as conn:
                live_position = _checkpoint(conn, projection.name, wait=True) or 0
                _fold(conn, [projection], sides, position, live_position, batch_size)
                if progress:
                    progress(live_position)  # compared there
                for live, side in sides[projection.name].items():
                    differences += _compare(conn, live, side.name, limit)
        finally:
            _drop_all(engine, [projection], "verify")
    return differences


def _compare(conn: Connection, live: str, side: str, limit: int) -> list[Difference]:
    found = []
    for label, left, right in (("live only", live, side), ("rebuild only", side, live)):
        rows = conn.exec_driver_sql(
            f"SELECT * FROM (SELECT * FROM {_quote(conn, left)}"
            f" EXCEPT ALL SELECT * FROM {_quote(conn, right)}) AS d LIMIT {int(limit)}"
        )
        found += [Difference(live, label, dict(row._mapping)) for row in rows]
    return found
