"""Migrations go up, down and up again, and agree with the models in schema.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.util import CommandError

import conversations.keys
import conversations.projections.registry  # noqa: F401  (their tables join the metadata)
from conversations import migrate
from conversations.database import create_database, create_engine, drop_database
from conversations.schema import metadata
from tests.conftest import REPO


@pytest.fixture
def empty_engine(server_url: str) -> Iterator[sqlalchemy.Engine]:
    name = f"conversations_migrations_{uuid.uuid4().hex[:10]}"
    engine = create_engine(create_database(server_url, name))
    yield engine
    engine.dispose()
    drop_database(server_url, name)


def tables(engine: sqlalchemy.Engine) -> set[str]:
    return set(sqlalchemy.inspect(engine).get_table_names()) - {"alembic_version"}


def functions(conn: sqlalchemy.Connection) -> set[str]:
    rows = conn.exec_driver_sql(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
    )
    return {row[0] for row in rows}


@pytest.mark.smoke
def test_upgrade_downgrade_upgrade(empty_engine: sqlalchemy.Engine) -> None:
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    assert tables(empty_engine) == set(metadata.tables)
    with empty_engine.connect() as conn:
        assert functions(conn)
        migrate.downgrade(conn, "base")
        assert functions(conn) == set()
    assert tables(empty_engine) == set()
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    assert tables(empty_engine) == set(metadata.tables)


def test_models_match_migrations(engine: sqlalchemy.Engine) -> None:
    """What `alembic check` does: autogenerate finds nothing left to migrate."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_migrations_are_at_head(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as conn:
        current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert current == migrate.head_revision()


def test_the_event_store_is_not_dropped_while_it_holds_events(
    empty_engine: sqlalchemy.Engine,
) -> None:
    """Events refuse DELETE and TRUNCATE; a downgrade to base must not drop them either."""
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    with empty_engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO events (location_id, stream_id, event_type, payload, raw,"
                " metadata, dedup_key) VALUES ('l', 's', 'InboundMessage', '{}', '', '{}', 'k')"
            )
        )
    with empty_engine.connect() as conn, pytest.raises(CommandError, match="holds 1 events"):
        migrate.downgrade(conn, "base")
    assert tables(empty_engine) == set(metadata.tables)
    with empty_engine.connect() as conn:
        migrate.downgrade(conn, "0012")  # a downgrade that keeps the events still works
        migrate.upgrade(conn)


def test_an_upgrade_to_a_revision_below_the_database_is_refused(
    empty_engine: sqlalchemy.Engine,
) -> None:
    """alembic would do nothing and report success; the schema did not move."""
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    with empty_engine.connect() as conn, pytest.raises(CommandError, match="--downgrade 0012"):
        migrate.upgrade(conn, "0012")
    with empty_engine.connect() as conn:
        migrate.upgrade(conn, migrate.head_revision() or "head")  # at it: nothing to do
        migrate.upgrade(conn)


def _waiting_for_the_migration_lock(conn: sqlalchemy.Connection) -> bool:
    return bool(
        conn.exec_driver_sql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            f" AND objid = {migrate.LOCK_KEY}"
        ).scalar()
    )


def test_alembic_upgrade_waits_for_a_migration_in_progress(
    empty_engine: sqlalchemy.Engine,
) -> None:
    """`alembic upgrade head` (which README offers beside `conversations migrate`) takes
    the lock `migrate` and `serve` take: run while another migrates, it must wait, not
    apply the same migrations again and fail on "column already exists"."""
    url = empty_engine.url.render_as_string(hide_password=False)
    with empty_engine.connect() as holder, empty_engine.connect() as watcher:
        holder.exec_driver_sql(f"SELECT pg_advisory_xact_lock({migrate.LOCK_KEY})")
        alembic = subprocess.Popen(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            env={**os.environ, "DATABASE_URL": url},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not _waiting_for_the_migration_lock(watcher):
                assert alembic.poll() is None, "alembic migrated without the migration lock"
                assert time.monotonic() < deadline, "alembic neither waited nor finished"
                time.sleep(0.1)
            holder.rollback()  # the other migration is done: alembic goes on
            output, _ = alembic.communicate(timeout=60)
        finally:
            if alembic.poll() is None:
                alembic.kill()
                alembic.wait()
    assert alembic.returncode == 0, output
    assert tables(empty_engine) == set(metadata.tables)


def _migrate_cli(url: str, *argv: str, status: int = 0) -> str:
    """`conversations migrate ARGV`'s log, as a user reads it."""
    result = subprocess.run(
        [sys.executable, "-m", "conversations", "migrate", *argv],
        env={
            **os.environ,
            "DATABASE_URL": url,
            "CONVERSATIONS_LOG_LEVEL": "info",
            "CONVERSATIONS_LOG_FORMAT": "text",
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == status, result.stderr
    return result.stderr


def test_migrate_says_from_which_revision_to_which_and_what_to_replay(
    empty_engine: sqlalchemy.Engine,
) -> None:
    """The log said "migrations applied" alike for an old store upgraded, nothing to do
    (the second of two `serve` starting together) and a downgrade, and nothing of the
    `conversations replay` an upgrade across 0011, 0014, 0015 or 0016 calls for."""
    url = empty_engine.url.render_as_string(hide_password=False)
    head = migrate.head_revision()
    fresh = _migrate_cli(url)
    assert f"schema upgraded from base to {head}" in fresh
    assert "replay" not in fresh  # a new database has no rows to render again
    again = _migrate_cli(url)
    assert f"schema already at {head}: no migration to apply" in again
    down = _migrate_cli(url, "--downgrade", "0010")
    assert f"schema downgraded from {head} to 0010" in down
    assert "replay" not in down
    up = _migrate_cli(url)
    assert f"schema upgraded from 0010 to {head}" in up
    assert "run `conversations replay` once" in up
    assert "before migration 0011, 0014, 0015, 0016 " in up


@pytest.mark.parametrize("argv", [(), ("--downgrade", "0013")], ids=["upgrade", "downgrade"])
def test_a_database_a_newer_release_migrated_is_named_so(
    empty_engine: sqlalchemy.Engine, argv: tuple[str, ...]
) -> None:
    """Back on an older release after a newer one migrated the database, alembic said
    only "Can't locate revision identified by '0099'", and `serve` (which migrates on
    start) exited with that."""
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    with empty_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    url = empty_engine.url.render_as_string(hide_password=False)
    message = _migrate_cli(url, *argv, status=2).strip().splitlines()[-1]
    assert "Traceback" not in message
    assert "schema is at 0099, which this release does not know" in message
    assert "a newer release migrated it" in message
    assert f"`conversations migrate --downgrade {migrate.head_revision()}`" in message


@pytest.mark.parametrize(
    ("row", "below", "refusal"),
    [
        pytest.param(
            "INSERT INTO api_keys (key_id, secret_sha256, label, locations)"
            " VALUES ('k1', 'sha', 'reporting', ARRAY['loc'])",
            "0005",
            "holds 1 API key",
            id="api-keys",
        ),
        pytest.param(
            "INSERT INTO quarantine (source, reason, detail, body, body_sha256)"
            " VALUES ('webhook', 'not_json', 'not JSON', 'x', 'sha')",
            "base",
            "holds 1 bodies",
            id="quarantine",
        ),
    ],
)
def test_a_downgrade_that_would_drop_what_cannot_be_made_again_is_refused(
    empty_engine: sqlalchemy.Engine, row: str, below: str, refusal: str
) -> None:
    """As for the events: `--downgrade 0005` dropped every API key, silently (after
    upgrading again every integrator's key was refused), and `--downgrade base` dropped
    the bodies a store that has only received unusable ones keeps for a retry."""
    with empty_engine.connect() as conn:
        migrate.upgrade(conn)
    with empty_engine.begin() as conn:
        conn.execute(sqlalchemy.text(row))
    with empty_engine.connect() as conn, pytest.raises(CommandError, match=refusal):
        migrate.downgrade(conn, below)
    with empty_engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    assert tables(empty_engine) == set(metadata.tables)
