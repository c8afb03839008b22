"""Why a projection is behind: the failure its worker keeps retrying, if any.

A fold that fails (a bug meeting some event, a value the database refuses) is retried
with backoff and holds the projection at its checkpoint. The worker runs in a process of
its own, so it records the failure on the projection's checkpoint row, where
`conversations status`, `/projections`, `/readyz` and `/metrics` read it, and clears it
once a fold succeeds.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "projection_checkpoints"


def upgrade() -> None:
    op.add_column(_TABLE, sa.Column("failure", sa.Text(), nullable=True))
    op.add_column(_TABLE, sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column(_TABLE, "failing_since")
    op.drop_column(_TABLE, "failure")
