"""The `TYPE_*` name of each conversation's last message (`lastMessageType`), which showed
the name of its channel: TYPE_SMS for a campaign SMS, null for an activity, where
HighLevel shows the message's own type (TYPE_CAMPAIGN_SMS, TYPE_ACTIVITY_APPOINTMENT).

Each message of `location_conversation_messages` gets its name, and each summary of
`location_conversations` its last message's. Existing rows get NULL, read as their
channel's name (as before) until one of their events arrives again or `conversations
replay` renders every row.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "location_conversation_messages", sa.Column("message_type", sa.Text(), nullable=True)
    )
    op.add_column(
        "location_conversations", sa.Column("last_message_type", sa.Text(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("location_conversations", "last_message_type")
    op.drop_column("location_conversation_messages", "message_type")
