"""An index to find where a contact has messages by its id alone, for keys that read
every location (a location-scoped key's lookup uses the primary key).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_contact_channels_contact_id"), "contact_channels", ["contact_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_contact_channels_contact_id"), table_name="contact_channels")
