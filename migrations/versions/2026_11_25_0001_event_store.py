"""The event store: an append-only, gap-safe event table and the quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Why appends take a lock (docs/ordering.md says it at length): a position comes from a
# sequence when the row is inserted, but becomes visible when its transaction commits.
# Two concurrent writers can take positions 7 and 8 and commit 8 first; a reader that has
# seen 8 and moved its cursor past 7 would never see 7. So every INSERT statement first
# takes one transaction-scoped advisory lock, held until commit: transactions that append
# follow each other, and committed positions always form a prefix with no hole that a
# later commit could fill. Reading "everything after P" is then safe with a plain
# `position > P`. The cost is one appending transaction at a time in the whole database;
# the service keeps it cheap by committing many webhooks per transaction (group commit).
# The lock sits in a trigger, not in application code, so no writer can skip it.
APPEND_LOCK_KEY = 727_741_0001

UPGRADE_SQL = f"""
CREATE FUNCTION events_serialize_appends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
    RETURN NULL;
END $$;

CREATE TRIGGER events_serialize_appends BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_serialize_appends();

-- Versions are assigned here, under the append lock, so every stream counts 1, 2, 3 ...
-- whatever the application sends. Rows inserted earlier in the same statement are visible.
-- Planned for each row (force_custom_plan): a plan cached by a connection while the table
-- was small would scan the whole table for every row once it is large.
CREATE FUNCTION events_assign_version() RETURNS trigger LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    -- A one-entry backward scan of the unique index, however long the stream is.
    NEW.version := coalesce((
        SELECT version FROM events
         WHERE location_id = NEW.location_id AND stream_id = NEW.stream_id
         ORDER BY version DESC LIMIT 1), 0) + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER events_assign_version BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_assign_version();

CREATE FUNCTION events_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_forbid_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_forbid_change();
CREATE TRIGGER events_forbid_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_forbid_change();

-- Wakes readers (projection workers, live feeds) when appends commit; NOTIFY is
-- delivered at commit, never for a rolled-back append.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conversations_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;
"""

DOWNGRADE_SQL = """
DROP TRIGGER events_notify ON events;
DROP TRIGGER events_forbid_truncate ON events;
DROP TRIGGER events_forbid_update_delete ON events;
DROP TRIGGER events_assign_version ON events;
DROP TRIGGER events_serialize_appends ON events;
DROP FUNCTION events_notify();
DROP FUNCTION events_forbid_change();
DROP FUNCTION events_assign_version();
DROP FUNCTION events_serialize_appends();
"""


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "position",
            sa.BigInteger(),
            sa.Identity(always=True, cache=1),
            nullable=False,
        ),
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_events_event_id")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_events_dedup_key")),
        sa.UniqueConstraint(
            "location_id",
            "stream_id",
            "version",
            name=op.f("uq_events_location_id_stream_id_version"),
        ),
    )
    op.create_index(op.f("ix_events_location_id_position"), "events", ["location_id", "position"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column(
            "last_received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column(
            "errors", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("location_id", sa.Text(), nullable=True),
        sa.Column(
            "headers", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_sha256", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("resolved_position", sa.BigInteger(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
        sa.UniqueConstraint("body_sha256", name=op.f("uq_quarantine_body_sha256")),
    )
    op.create_index(op.f("ix_quarantine_status_id"), "quarantine", ["status", "id"])
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    # Below this revision there is no event store. The table refuses DELETE and TRUNCATE
    # so that no release loses an event; dropping it with its events would undo that, so
    # it is refused while it holds one (drop the database itself if that is the intent).
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    if held:
        raise CommandError(
            f"refusing to downgrade below 0001: it drops the event store, which holds "
            f"{held} events (drop the database itself to discard them)"
        )
    # Nor the bodies kept aside for a retry after a fix (a store that has only ever
    # received unusable bodies holds no event).
    kept = op.get_bind().execute(sa.text("SELECT count(*) FROM quarantine")).scalar_one()
    if kept:
        raise CommandError(
            f"refusing to downgrade below 0001: it drops the quarantine, which holds "
            f"{kept} bodies (drop the database itself to discard them)"
        )
    op.execute(DOWNGRADE_SQL)
    op.drop_index(op.f("ix_quarantine_status_id"), table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_index(op.f("ix_events_location_id_position"), table_name="events")
    op.drop_table("events")
