"""Alembic environment: the database comes from the service's settings, or from the
connection a caller hands in (`config.attributes["connection"]`, as tests and
`conversations migrate` do)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

import conversations.keys
import conversations.projections.registry  # noqa: F401  (their tables join the metadata)
from conversations import migrate
from conversations.database import create_engine, open_database
from conversations.schema import metadata
from conversations.settings import Settings

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        # Before the revision is read: a concurrent `migrate`, `serve` or `alembic
        # upgrade` finishes first, and this one finds its work done.
        migrate.lock(connection)
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = config.get_main_option("sqlalchemy.url") or open_database(Settings.from_env()).url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run against a database.")
run_migrations_online()
