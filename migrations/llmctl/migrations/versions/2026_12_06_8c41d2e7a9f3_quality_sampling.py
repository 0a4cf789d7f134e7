"""quality sampling: deployment policy, scorer replicas, tenant opt-out, samples, per-revision judgement

Revision ID: 8c41d2e7a9f3
Revises: 3f2a9c1d0b7e
Create Date: 2026-12-06 22:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8c41d2e7a9f3"
down_revision: str | None = "3f2a9c1d0b7e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the ORM, so this file keeps meaning what it meant when written.
REPLICA_ROLES = ("serve", "score")
SAMPLE_STATUSES = ("pending", "scored", "failed")
QUALITY_STATES = ("ok", "watch", "degraded")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.add_column(sa.Column("quality_sample_rate", sa.Double(), nullable=False, server_default="0.01"))
        batch_op.add_column(
            sa.Column("quality_auto_rollback", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("quality_threshold", sa.Double(), nullable=False, server_default="0.1"))
        batch_op.add_column(sa.Column("quality_reference_revision_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_deployments_quality_reference_revision_id_revisions"),
            "revisions",
            ["quality_reference_revision_id"],
            ["id"],
        )
    with op.batch_alter_table("replicas") as batch_op:
        batch_op.add_column(
            sa.Column("role", _enum("replica_role", REPLICA_ROLES), nullable=False, server_default="serve")
        )
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("quality_opt_out", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "quality_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("answer_token_ids", sa.JSON(), nullable=True),
        sa.Column("status", _enum("sample_status", SAMPLE_STATUSES), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("mean_logprob", sa.Double(), nullable=True),
        sa.Column("top1", sa.Double(), nullable=True),
        sa.Column("baseline_mean_logprob", sa.Double(), nullable=True),
        sa.Column("baseline_top1", sa.Double(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_quality_samples_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_quality_samples_tenant_id_tenants"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_samples")),
    )
    op.create_index("ix_quality_samples_deployment_id_revision", "quality_samples", ["deployment_id", "revision"])
    op.create_index(op.f("ix_quality_samples_at"), "quality_samples", ["at"])
    op.create_table(
        "revision_quality",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("state", _enum("quality_state", QUALITY_STATES), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_revision_quality_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revision_quality")),
        sa.UniqueConstraint("deployment_id", "revision", name=op.f("uq_revision_quality_deployment_id_revision")),
    )


def downgrade() -> None:
    op.drop_table("revision_quality")
    op.drop_index(op.f("ix_quality_samples_at"), table_name="quality_samples")
    op.drop_index("ix_quality_samples_deployment_id_revision", table_name="quality_samples")
    op.drop_table("quality_samples")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("quality_opt_out")
    with op.batch_alter_table("replicas") as batch_op:
        batch_op.drop_constraint(op.f("ck_replicas_replica_role"), type_="check")
        batch_op.drop_column("role")
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.drop_constraint(
            op.f("fk_deployments_quality_reference_revision_id_revisions"), type_="foreignkey"
        )
        batch_op.drop_column("quality_reference_revision_id")
        batch_op.drop_column("quality_threshold")
        batch_op.drop_column("quality_auto_rollback")
        batch_op.drop_column("quality_sample_rate")
