"""The contact channel summary: a ledger of messages and per contact and channel totals.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact_channel_messages",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("message_key", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=True),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("date_added", sa.DateTime(timezone=True), nullable=True),
        sa.Column("preview", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "message_key", name=op.f("pk_contact_channel_messages")
        ),
    )
    op.create_index(
        op.f("ix_contact_channel_messages_location_id_contact_id_channel"),
        "contact_channel_messages",
        ["location_id", "contact_id", "channel"],
    )
    op.create_table(
        "contact_channels",
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("inbound_count", sa.Integer(), nullable=False),
        sa.Column("outbound_count", sa.Integer(), nullable=False),
        sa.Column("first_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_direction", sa.Text(), nullable=False),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.Column("last_preview", sa.Text(), nullable=False),
        sa.Column("last_message_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "contact_id", "channel", name=op.f("pk_contact_channels")
        ),
    )


def downgrade() -> None:
    op.drop_table("contact_channels")
    op.drop_index(
        op.f("ix_contact_channel_messages_location_id_contact_id_channel"),
        table_name="contact_channel_messages",
    )
    op.drop_table("contact_channel_messages")
