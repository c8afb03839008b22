"""Every table of the store, with one naming convention so constraints have stable names.

The models here are what `alembic check` compares the migrations against. Triggers and
functions (immutability, gap-safe ordering, stream versions) live only in the migrations:
see `migrations/versions/*_event_store.py` and `docs/ordering.md`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per accepted webhook delivery. Append-only: the database refuses UPDATE,
# DELETE and TRUNCATE. `position` is global and only grows; `version` counts the events
# of one conversation (stream) within one location, from 1 without gaps.
events = Table(
    "events",
    metadata,
    Column("position", BigInteger, Identity(always=True, cache=1), primary_key=True),
    Column(
        "event_id", UUID(as_uuid=True), nullable=False, server_default=text("gen_random_uuid()")
    ),
    Column("location_id", Text, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("message_id", Text, nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=True),
    Column(
        "recorded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    Column("payload", JSONB, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("dedup_key", Text, nullable=False),
    UniqueConstraint("event_id"),
    UniqueConstraint("dedup_key"),
    UniqueConstraint("location_id", "stream_id", "version"),
    Index(None, "location_id", "position"),
    Index(None, "location_id", "message_id"),
)

# How far each projection has folded the event stream; moved in the same transaction as
# the projection's rows, and only forward.
projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    Column(
        "updated_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    # The fold its worker keeps retrying, if one fails (migration 0013): one line, and
    # since when. Cleared by the next fold that succeeds.
    Column("failure", Text),
    Column("failing_since", DateTime(timezone=True)),
)

# Bodies we could not use as events, kept verbatim so they can be inspected and retried.
# Retries of one bad body (HighLevel resends non-2xx answers) count as attempts of one row.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "received_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    Column(
        "last_received_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("source", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("location_id", Text, nullable=True),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("body", LargeBinary, nullable=False),
    Column("body_sha256", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("resolved_position", BigInteger, nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("body_sha256"),
    Index(None, "status", "id"),
)

# Secrets the service makes for itself at migration time (e.g. the key that signs
# pagination cursors), shared by every process on the database.
service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
