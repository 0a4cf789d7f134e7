"""response cache: a tenant may let the gateway's exact cache answer its sampled requests too

Revision ID: e5a8c3f17b24
Revises: c7d2e4f81a36
Create Date: 2026-12-07 17:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5a8c3f17b24"
down_revision: str | None = "c7d2e4f81a36"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("cache_sampled", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("cache_sampled")
