"""semantic cache: a deployment may let the gateway answer reworded questions from cache

Revision ID: a7c4e2d9f150
Revises: b3f1d8e26c49
Create Date: 2026-12-07 19:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7c4e2d9f150"
down_revision: str | None = "b3f1d8e26c49"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.add_column(sa.Column("semantic_cache_threshold", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.drop_column("semantic_cache_threshold")
