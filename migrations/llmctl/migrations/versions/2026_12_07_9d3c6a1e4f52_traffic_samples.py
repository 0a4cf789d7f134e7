"""traffic samples: the shape of answered gateway requests (arrival, token counts, shared prefix), no content

Revision ID: 9d3c6a1e4f52
Revises: 5b7e2f90c3a1
Create Date: 2026-12-07 12:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d3c6a1e4f52"
down_revision: str | None = "5b7e2f90c3a1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "traffic_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_name", sa.String(length=63), nullable=False),
        sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("shared_prefix_tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traffic_samples")),
    )
    op.create_index("ix_traffic_samples_deployment_name_arrived_at", "traffic_samples",
                    ["deployment_name", "arrived_at"])


def downgrade() -> None:
    op.drop_index("ix_traffic_samples_deployment_name_arrived_at", table_name="traffic_samples")
    op.drop_table("traffic_samples")
