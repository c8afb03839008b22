"""The operator's commands over projections: `replay`, `verify` and `status`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from sqlalchemy import Engine, text

from conversations import migrate
from conversations.database import DatabaseHandle, create_engine
from conversations.progress import Progress
from conversations.projections.base import Projection
from conversations.projections.registry import select
from conversations.projections.runner import ReplayBusy, rebuild
from conversations.projections.runner import status as projection_status
from conversations.projections.runner import verify as verify_projection
from conversations.settings import Settings
from conversations.store import head_position


def _projections(args: argparse.Namespace) -> tuple[Projection, ...] | None:
    try:
        return select(args.projection)
    except ValueError as error:
        print(f"conversations: {error}", file=sys.stderr)
        return None


def _progress(
    engine: Engine, label: str, upto: Projection | None = None
) -> tuple[Progress, Callable[[int], None]]:
    """A bar up to the newest event, or (`upto`) to that projection's checkpoint: what
    `verify` rebuilds and compares, behind the newest event while webhooks arrive."""
    with engine.connect() as conn:
        total = projection_status(conn, [upto])[0].position if upto else head_position(conn)
    bar = Progress(total=total, label=label, unit="events")
    return bar, bar.update_to


def replay(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    projections = _projections(args)
    if projections is None:
        return 2
    engine = create_engine(handle.url)
    names = ", ".join(p.name for p in projections)
    try:
        bar, report = _progress(engine, f"replay {names}")
        try:
            position = rebuild(engine, projections, report)
        except ReplayBusy as error:
            bar.close()  # before the error, which is then the last line (as `verify` does)
            print(f"conversations: {error}", file=sys.stderr)
            return 1
        finally:
            bar.close()
    finally:
        engine.dispose()
    print(f"{names}: rebuilt up to position {position}, switched over")
    return 0


def verify(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    projections = _projections(args)
    if projections is None:
        return 2
    engine = create_engine(handle.url)
    differing = 0
    try:
        for projection in projections:
            bar, report = _progress(engine, f"verify {projection.name}", projection)
            try:
                differences = verify_projection(engine, projection, report)
            except ReplayBusy as error:
                bar.close()
                print(f"conversations: {error}", file=sys.stderr)
                return 1
            bar.close()
            if not differences:
                print(f"{projection.name}: matches a fresh rebuild")
                continue
            differing += 1
            print(f"{projection.name}: DIFFERS from a fresh rebuild")
            for difference in differences:
                row = json.dumps(difference.row, default=str, sort_keys=True)
                print(f"  {difference.table} ({difference.side}): {row}")
    finally:
        engine.dispose()
    return 1 if differing else 0


def status(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    engine = create_engine(handle.url)
    try:
        with engine.connect() as conn:
            schema = _schema_line(migrate.current_revision(conn))
            events = conn.scalar(text("SELECT count(*) FROM events"))
            head = head_position(conn)
            pending, total = conn.execute(
                text("SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM quarantine")
            ).one()
            rows = projection_status(conn, select(None))
    finally:
        engine.dispose()
    print(f"database:    {handle.describe()}")
    print(f"schema:      {schema}")
    print(f"events:      {events} (last position {head})")
    print(f"quarantine:  {pending} pending ({total} kept in all)")
    print(f"{'projection':<24} {'position':>10} {'behind':>8} {'lag':>9}  updated")
    for row in rows:
        updated = row.updated_at.isoformat(timespec="seconds") if row.updated_at else "never"
        print(
            f"{row.name:<24} {row.position:>10} {row.lag_events:>8}"
            f" {row.lag_seconds:>8.1f}s  {updated}"
        )
    for row in rows:
        if row.failure:
            since = row.failing_since.isoformat(timespec="seconds") if row.failing_since else "?"
            print(f"{row.name} is stuck since {since}, retrying: {row.failure}")
    return 0


def _schema_line(current: str | None) -> str:
    """The database's revision, and what to do when it is not this release's: after
    installing a new release and before `migrate`, the counts read as usual while the
    projections cannot fold (their workers retry in vain) and `replay` and `verify` fail."""
    head = migrate.head_revision()
    if migrate.newer_than_this_release(current) is not None:
        return (
            f"{current}, which this release (up to {head}) does not know: a newer release"
            f" migrated it (go back down with it: `conversations migrate --downgrade {head}`)"
        )
    if current != head:
        return f"{current}, this release needs {head}: run `conversations migrate`"
    return f"{current}"
