"""Conversations per location: a message ledger, flags, merges and their roots, and one
summary row per conversation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUMMARY = "location_conversations"

# (index name, columns) of the summary: every list order and filter has one.
SUMMARY_INDEXES: tuple[tuple[str, list[str]], ...] = (
    (
        "ix_location_conversations_location_id_sort_at_conversation_id",
        ["location_id", "sort_at", "conversation_id"],
    ),
    (
        "ix_location_conversations_location_id_contact_id_sort_a_4847",
        ["location_id", "contact_id", "sort_at", "conversation_id"],
    ),
    (
        "ix_location_conversations_location_id_last_message_chan_4bc2",
        [
            "location_id",
            "last_message_channel",
            "last_message_direction",
            "sort_at",
            "conversation_id",
        ],
    ),
    (
        "ix_location_conversations_location_id_unread_sort_at_co_62ad",
        ["location_id", "unread", "sort_at", "conversation_id"],
    ),
    (
        "ix_location_conversations_location_id_starred_sort_at_c_c0ce",
        ["location_id", "starred", "sort_at", "conversation_id"],
    ),
)


def upgrade() -> None:
    op.create_table(
        "location_conversation_messages",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("message_key", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=True),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("date_added", sa.DateTime(timezone=True), nullable=True),
        sa.Column("preview", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "message_key", name=op.f("pk_location_conversation_messages")
        ),
    )
    op.create_index(
        op.f("ix_location_conversation_messages_location_id_conversation_id"),
        "location_conversation_messages",
        ["location_id", "conversation_id"],
    )
    op.create_table(
        "location_conversation_flags",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("unread_count", sa.Integer(), nullable=True),
        sa.Column("starred", sa.Boolean(), nullable=True),
        sa.Column("inbox", sa.Boolean(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=True),
        sa.Column("contact_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(
            "location_id", "conversation_id", name=op.f("pk_location_conversation_flags")
        ),
    )
    op.create_table(
        "location_conversation_merges",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("old_conversation_id", sa.Text(), nullable=False),
        sa.Column("new_conversation_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id",
            "old_conversation_id",
            "new_conversation_id",
            name=op.f("pk_location_conversation_merges"),
        ),
    )
    op.create_table(
        "location_conversation_roots",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("root_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "conversation_id", name=op.f("pk_location_conversation_roots")
        ),
    )
    op.create_index(
        op.f("ix_location_conversation_roots_location_id_root_id"),
        "location_conversation_roots",
        ["location_id", "root_id"],
    )
    op.create_table(
        SUMMARY,
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_message_channel", sa.Text(), nullable=True),
        sa.Column("last_message_direction", sa.Text(), nullable=True),
        sa.Column("last_message_status", sa.Text(), nullable=True),
        sa.Column("last_message_preview", sa.Text(), nullable=True),
        sa.Column("last_message_key", sa.Text(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("channels", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("unread_count", sa.Integer(), nullable=True),
        sa.Column("starred", sa.Boolean(), nullable=True),
        sa.Column("inbox", sa.Boolean(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=True),
        sa.Column("merged_ids", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("first_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sort_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unread", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "conversation_id", name=op.f("pk_" + SUMMARY)),
    )
    for name, columns in SUMMARY_INDEXES:
        op.create_index(op.f(name), SUMMARY, columns)


def downgrade() -> None:
    for name, _ in reversed(SUMMARY_INDEXES):
        op.drop_index(op.f(name), table_name=SUMMARY)
    op.drop_table(SUMMARY)
    op.drop_index(
        op.f("ix_location_conversation_roots_location_id_root_id"),
        table_name="location_conversation_roots",
    )
    op.drop_table("location_conversation_roots")
    op.drop_table("location_conversation_merges")
    op.drop_table("location_conversation_flags")
    op.drop_index(
        op.f("ix_location_conversation_messages_location_id_conversation_id"),
        table_name="location_conversation_messages",
    )
    op.drop_table("location_conversation_messages")
