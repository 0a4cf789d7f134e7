"""prompt audit: per traffic sample, the shared prefix's hash and the system prompt's tokens and hash (no text)

Revision ID: b3e19d7c5a42
Revises: e5a8c3f17b24
Create Date: 2026-12-07 19:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3e19d7c5a42"
down_revision: str | None = "e5a8c3f17b24"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows recorded before this revision keep their meaning: nothing known shared by hash, no system prompt.
    with op.batch_alter_table("traffic_samples") as batch_op:
        batch_op.add_column(sa.Column("shared_prefix_hash", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("system_prompt_tokens", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("system_prompt_hash", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic_samples") as batch_op:
        batch_op.drop_column("system_prompt_hash")
        batch_op.drop_column("system_prompt_tokens")
        batch_op.drop_column("shared_prefix_hash")
