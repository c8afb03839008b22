"""What a message's webhooks said of its Live Chat widget (`chatWidgetId`) and its email
provider (`provider`), kept on the timeline for the read API (`chatWidgetId` of
GetMessageResponseDto, `provider` of GetEmailMessageResponseDto), which showed null.

Existing rows get NULL, and their stored documents (`doc`, migration 0011) the old
values: a row is rendered again the next time one of its events arrives, and
`conversations replay` renders every row at once (also an empty `body`, which rows
written before read as null).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "timeline_messages"


def upgrade() -> None:
    op.add_column(_TABLE, sa.Column("chat_widget_id", sa.Text(), nullable=True))
    op.add_column(_TABLE, sa.Column("provider", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column(_TABLE, "provider")
    op.drop_column(_TABLE, "chat_widget_id")
