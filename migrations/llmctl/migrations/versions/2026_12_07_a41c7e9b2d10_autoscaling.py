"""autoscaling: a deployment's policy, and every decision the autoscaler took or (advisory) would have taken

Revision ID: a41c7e9b2d10
Revises: 9d3c6a1e4f52
Create Date: 2026-12-07 18:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a41c7e9b2d10"
down_revision: str | None = "9d3c6a1e4f52"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MODES = ("on", "advisory", "off")


def _mode() -> sa.Enum:
    return sa.Enum(*MODES, name="autoscale_mode", native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "autoscaling",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("target_queue", sa.Double(), nullable=False),
        sa.Column("target_kv_usage", sa.Double(), nullable=True),
        sa.Column("scale_up_window_s", sa.Double(), nullable=False),
        sa.Column("scale_down_window_s", sa.Double(), nullable=False),
        sa.Column("max_step", sa.Integer(), nullable=False),
        sa.Column("mode", _mode(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE",
                                name=op.f("fk_autoscaling_deployment_id_deployments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_autoscaling")),
        sa.UniqueConstraint("deployment_id", name=op.f("uq_autoscaling_deployment_id")),
    )
    op.create_table(
        "autoscale_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_name", sa.String(length=63), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mode", _mode(), nullable=False),
        sa.Column("current", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("signal", sa.String(length=16), nullable=False),
        sa.Column("load", sa.Double(), nullable=True),
        sa.Column("target", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_autoscale_decisions")),
    )
    op.create_index("ix_autoscale_decisions_deployment_name_at", "autoscale_decisions", ["deployment_name", "at"])


def downgrade() -> None:
    op.drop_index("ix_autoscale_decisions_deployment_name_at", table_name="autoscale_decisions")
    op.drop_table("autoscale_decisions")
    op.drop_table("autoscaling")
