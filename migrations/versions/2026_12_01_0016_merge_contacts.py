"""The contact each ConversationUpdate (merge) names, kept with its pair: HighLevel merges
a live chat into the conversation of the contact it identified the visitor as, and a
merged conversation without messages or unread updates of its own read as the visitor.

Existing pairs get NULL (read as before) until `conversations replay` folds their events
again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("location_conversation_merges", sa.Column("contact_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("location_conversation_merges", "contact_id")
