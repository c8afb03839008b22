"""Fewer indexes on the two projection tables that every message writes.

Each index costs PostgreSQL about 4 µs of CPU per row written (measured on this
project's 2-core machine with tables of 200,000-400,000 rows), and a conversation
summary's sort key moves with every message, so each of its updates writes every index
again. Per message, 16 index entries become 10 in the common case:

- `timeline_messages`: the primary key becomes (message_key, location_id), which also
  serves lookups by key alone, so `ix_..._message_key` goes. `message_id` and
  `email_message_id` get one index each, id first, for messages that have the id
  (lookups are `=`, which no NULL matches), instead of two each (within a location and
  across locations).
- `location_conversations`: the primary key becomes (conversation_id, location_id), which
  also serves lookups by id alone, so `ix_..._conversation_id` goes. The unread and
  starred lists read partial indexes (`WHERE unread IS TRUE`, `WHERE starred IS TRUE`)
  written only for such conversations; the read list reads the main list index.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMELINE = "timeline_messages"
_SUMMARIES = "location_conversations"

# (name, table, columns) of the indexes this revision replaces.
_OLD_INDEXES = [
    ("ix_timeline_messages_location_id_message_id", _TIMELINE, ["location_id", "message_id"]),
    (
        "ix_timeline_messages_location_id_email_message_id",
        _TIMELINE,
        ["location_id", "email_message_id"],
    ),
    ("ix_timeline_messages_message_key", _TIMELINE, ["message_key"]),
    ("ix_timeline_messages_message_id", _TIMELINE, ["message_id"]),
    ("ix_timeline_messages_email_message_id", _TIMELINE, ["email_message_id"]),
    (
        "ix_location_conversations_location_id_unread_sort_at_co_62ad",
        _SUMMARIES,
        ["location_id", "unread", "sort_at", "conversation_id"],
    ),
    (
        "ix_location_conversations_location_id_starred_sort_at_c_c0ce",
        _SUMMARIES,
        ["location_id", "starred", "sort_at", "conversation_id"],
    ),
    ("ix_location_conversations_conversation_id", _SUMMARIES, ["conversation_id"]),
]

# (name, table, columns, predicate) of the indexes that replace them.
_NEW_INDEXES = [
    (
        "ix_timeline_messages_message_id_location_id",
        _TIMELINE,
        ["message_id", "location_id"],
        "message_id IS NOT NULL",
    ),
    (
        "ix_timeline_messages_email_message_id_location_id",
        _TIMELINE,
        ["email_message_id", "location_id"],
        "email_message_id IS NOT NULL",
    ),
    (
        "ix_location_conversations_unread",
        _SUMMARIES,
        ["location_id", "sort_at", "conversation_id"],
        "unread IS TRUE",
    ),
    (
        "ix_location_conversations_starred",
        _SUMMARIES,
        ["location_id", "sort_at", "conversation_id"],
        "starred IS TRUE",
    ),
]


def _primary_key(table: str, columns: list[str]) -> None:
    op.drop_constraint(f"pk_{table}", table, type_="primary")
    op.create_primary_key(f"pk_{table}", table, columns)


def upgrade() -> None:
    for name, table, _columns in _OLD_INDEXES:
        op.drop_index(name, table_name=table)
    _primary_key(_TIMELINE, ["message_key", "location_id"])
    _primary_key(_SUMMARIES, ["conversation_id", "location_id"])
    for name, table, columns, predicate in _NEW_INDEXES:
        op.create_index(name, table, columns, postgresql_where=predicate)


def downgrade() -> None:
    for name, table, _columns, _predicate in _NEW_INDEXES:
        op.drop_index(name, table_name=table)
    _primary_key(_TIMELINE, ["location_id", "message_key"])
    _primary_key(_SUMMARIES, ["location_id", "conversation_id"])
    for name, table, columns in _OLD_INDEXES:
        op.create_index(name, table, columns)
