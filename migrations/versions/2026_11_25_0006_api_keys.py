"""API keys for the read API, and the service's own secrets (cursor signing).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("secret_sha256", sa.Text(), nullable=False),
        sa.Column(
            "locations",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column("all_locations", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_secrets")),
    )
    # 256 bits from two random UUIDs (gen_random_uuid uses the strong random source).
    op.execute(
        "INSERT INTO service_secrets (name, value) VALUES ('cursor', encode(sha256("
        "convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'))"
    )


def downgrade() -> None:
    # Keys cannot be made again (only their SHA-256 is kept): dropping them would leave
    # every integrator's key refused after upgrading again. Refused while there is one,
    # as 0001 refuses to drop the events (delete the keys first if that is the intent).
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM api_keys")).scalar_one()
    if held:
        raise CommandError(
            f"refusing to downgrade below 0006: it drops the API keys, and the table holds"
            f" {held} API key(s), which could not be made again (delete them first,"
            f" `DELETE FROM api_keys`, to discard them)"
        )
    op.drop_table("service_secrets")
    op.drop_table("api_keys")
