"""Schema migrations, run in-process through alembic (the only way the schema changes)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).parent
# The transaction-scoped advisory lock every migration takes (`migrate`, `serve` on
# start, `alembic upgrade`: migrations/env.py), so that concurrent ones run one after
# the other, each reading the revision the one before it left.
LOCK_KEY = 727741000
# Migrations after which the projection rows written before them differ from a rebuild
# (read as before, and reported by `verify`) until `conversations replay` (README, `migrate`).
REPLAY_AFTER = frozenset({"0009", "0011", "0014", "0015", "0016"})


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None before the first migration."""
    return MigrationContext.configure(connection).get_current_revision()


def newer_than_this_release(current: str | None) -> str | None:
    """What to do about a database a newer release migrated (after going back to an
    older release), or None when this release knows the database's revision. alembic
    only says "Can't locate revision", and `conversations migrate` cannot help."""
    if current is None or current in _at_or_below(head_revision()):
        return None
    return (
        f"the database schema is at {current}, which this release does not know (its newest"
        f" is {head_revision()}): a newer release migrated it. Run that release, or go back"
        f" down with it first (`conversations migrate --downgrade {head_revision()}`)"
    )


def _refuse_unknown(connection: Connection) -> None:
    problem = newer_than_this_release(current_revision(connection))
    if problem is not None:
        raise CommandError(problem)


def lock(connection: Connection) -> None:
    """Wait for any other migration to finish (the lock ends with the transaction)."""
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")


def upgrade(connection: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to `revision` in the caller's connection, then commit; the
    revisions before and after, for the log to say what was done.

    A transaction-scoped advisory lock makes concurrent starts (several `serve`
    processes) migrate one after the other instead of racing.
    """
    lock(connection)
    _refuse_unknown(connection)
    before = current_revision(connection)
    _refuse_going_down(connection, revision)
    command.upgrade(alembic_config(connection), revision)
    after = current_revision(connection)
    connection.commit()
    return before, after


def replay_needed(before: str | None, after: str | None) -> list[str]:
    """The migrations of an upgrade from `before` to `after` that leave older projection
    rows to `conversations replay`; none for a new database (it has no rows yet)."""
    if before is None:
        return []
    applied = _at_or_below(after) - _at_or_below(before)
    return sorted(applied & REPLAY_AFTER)


def _at_or_below(revision: str | None) -> set[str]:
    if revision is None:
        return set()
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.iterate_revisions(revision, "base")}


def _refuse_going_down(connection: Connection, revision: str) -> None:
    """An upgrade to a revision below the database's does nothing in alembic: say so,
    rather than report success for a schema that did not move."""
    current = current_revision(connection)
    script = ScriptDirectory.from_config(alembic_config())
    if current is None or revision in ("head", "heads", current):
        return
    target = script.get_revision(revision)
    below = {rev.revision for rev in script.iterate_revisions(current, "base")} - {current}
    if target is not None and target.revision in below:
        raise CommandError(
            f"the database is at {current}, above {target.revision}: use "
            f"--downgrade {target.revision} to go down"
        )


def downgrade(connection: Connection, revision: str) -> tuple[str | None, str | None]:
    """Go down to `revision`; the revisions before and after, as `upgrade`."""
    lock(connection)
    _refuse_unknown(connection)
    before = current_revision(connection)
    command.downgrade(alembic_config(connection), revision)
    after = current_revision(connection)
    connection.commit()
    return before, after
