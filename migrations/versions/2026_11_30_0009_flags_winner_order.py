"""The winning ConversationUnreadUpdate's order key on `location_conversation_flags`, so
catch-up compares a batch's updates with it instead of rereading every earlier update.

Existing rows get NULLs: the projection refolds such a row from all of its updates the
next time one arrives (or `conversations replay` fills every row at once).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "location_conversation_flags",
        sa.Column("winner_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "location_conversation_flags", sa.Column("winner_content", sa.Text(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("location_conversation_flags", "winner_content")
    op.drop_column("location_conversation_flags", "winner_at")
