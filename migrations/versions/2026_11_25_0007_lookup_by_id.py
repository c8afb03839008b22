"""Indexes to find a conversation or a message by its id alone, for keys that read every
location (a location-scoped key's lookups use the existing location-first indexes).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column): one single-column index each.
_INDEXES: tuple[tuple[str, str], ...] = (
    ("location_conversations", "conversation_id"),
    ("location_conversation_roots", "conversation_id"),
    ("timeline_messages", "message_key"),
    ("timeline_messages", "message_id"),
    ("timeline_messages", "email_message_id"),
)


def upgrade() -> None:
    for table, column in _INDEXES:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def downgrade() -> None:
    for table, column in reversed(_INDEXES):
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
