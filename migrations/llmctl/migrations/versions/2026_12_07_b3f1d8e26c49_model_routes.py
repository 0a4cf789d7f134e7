"""model routes: a deployment may send its simple requests to a cheaper companion deployment

Revision ID: b3f1d8e26c49
Revises: b3e19d7c5a42
Create Date: 2026-12-07 19:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3f1d8e26c49"
down_revision: str | None = "b3e19d7c5a42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("companion_id", sa.Integer(), nullable=False),
        sa.Column("rule_kind", sa.String(length=32), nullable=False),
        sa.Column("rule_value", sa.Text(), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE",
                                name=op.f("fk_deployment_routes_deployment_id_deployments")),
        sa.ForeignKeyConstraint(["companion_id"], ["deployments.id"], ondelete="CASCADE",
                                name=op.f("fk_deployment_routes_companion_id_deployments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_routes")),
        sa.UniqueConstraint("deployment_id", name=op.f("uq_deployment_routes_deployment_id")),
    )
    op.create_index(op.f("ix_deployment_routes_companion_id"), "deployment_routes", ["companion_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deployment_routes_companion_id"), table_name="deployment_routes")
    op.drop_table("deployment_routes")
