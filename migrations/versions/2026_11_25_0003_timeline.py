"""The conversation timeline projection: one row per message, and conversation merges.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Names longer than PostgreSQL's 63 characters: SQLAlchemy shortens them (a prefix and a
# hash) the same way for `op.f(...)` here as for the models' conventional names.
_MESSAGE_INDEXES: tuple[tuple[str, list[str]], ...] = (
    (
        "ix_timeline_messages_location_id_conversation_id_date_added_message_key",
        ["location_id", "conversation_id", "date_added", "message_key"],
    ),
    (
        "ix_timeline_messages_location_id_contact_id_date_added_message_key",
        ["location_id", "contact_id", "date_added", "message_key"],
    ),
    (
        "ix_timeline_messages_location_id_date_added_message_key",
        ["location_id", "date_added", "message_key"],
    ),
    ("ix_timeline_messages_location_id_message_id", ["location_id", "message_id"]),
    ("ix_timeline_messages_location_id_email_message_id", ["location_id", "email_message_id"]),
)


def upgrade() -> None:
    op.create_table(
        "timeline_messages",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("message_key", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("message_type", sa.Text(), nullable=True),
        sa.Column("message_type_string", sa.Text(), nullable=True),
        sa.Column("message_type_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("call_status", sa.Text(), nullable=True),
        sa.Column("call_duration", sa.Double(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("plain_text", sa.Text(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("attachments", postgresql.JSONB(), nullable=False),
        sa.Column("from_", sa.Text(), nullable=True),
        sa.Column("to", postgresql.JSONB(), nullable=False),
        sa.Column("cc", postgresql.JSONB(), nullable=False),
        sa.Column("bcc", postgresql.JSONB(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("thread_id", sa.Text(), nullable=True),
        sa.Column("email_message_id", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("conversation_provider_id", sa.Text(), nullable=True),
        sa.Column("date_added", sa.DateTime(timezone=True), nullable=True),
        sa.Column("preview", sa.Text(), nullable=False),
        sa.Column("positions", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("updated_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "message_key", name=op.f("pk_timeline_messages")),
    )
    for name, columns in _MESSAGE_INDEXES:
        op.create_index(op.f(name), "timeline_messages", columns)
    op.create_table(
        "timeline_merges",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("old_conversation_id", sa.Text(), nullable=False),
        sa.Column("new_conversation_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id",
            "old_conversation_id",
            "new_conversation_id",
            name=op.f("pk_timeline_merges"),
        ),
    )
    op.create_table(
        "timeline_conversation_roots",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("root_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "conversation_id", name=op.f("pk_timeline_conversation_roots")
        ),
    )
    op.create_index(
        op.f("ix_timeline_conversation_roots_location_id_root_id"),
        "timeline_conversation_roots",
        ["location_id", "root_id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_timeline_conversation_roots_location_id_root_id"),
        table_name="timeline_conversation_roots",
    )
    op.drop_table("timeline_conversation_roots")
    op.drop_table("timeline_merges")
    for name, _ in reversed(_MESSAGE_INDEXES):
        op.drop_index(op.f(name), table_name="timeline_messages")
    op.drop_table("timeline_messages")
