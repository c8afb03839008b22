"""Each timeline message's JSON as the read API sends it, stored with the row
(`timeline_messages.doc`), so a page of messages is stored text instead of JSON that
PostgreSQL builds for every request.

Existing rows get NULL: reads build their JSON as before, and the projection renders a
row's document the next time one of its events arrives (`conversations replay` renders
every row at once).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("timeline_messages", sa.Column("doc", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("timeline_messages", "doc")
