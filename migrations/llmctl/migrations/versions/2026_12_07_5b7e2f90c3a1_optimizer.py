"""optimizer: runs, steps and measurements; trial replicas with their own engine config

Revision ID: 5b7e2f90c3a1
Revises: 8c41d2e7a9f3
Create Date: 2026-12-07 01:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b7e2f90c3a1"
down_revision: str | None = "8c41d2e7a9f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the ORM, so this file keeps meaning what it meant when written.
OLD_REPLICA_ROLES = ("serve", "score")
REPLICA_ROLES = ("serve", "score", "trial")
RUN_STATES = ("running", "succeeded", "failed", "cancelled")
STEP_STATES = ("pending", "running", "kept", "rejected", "skipped", "failed", "cancelled")
MEASUREMENT_STATES = ("pending", "done", "failed", "cancelled")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _set_roles(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("replicas") as batch_op:
        batch_op.drop_constraint(op.f("ck_replicas_replica_role"), type_="check")
        batch_op.alter_column("role", type_=_enum("replica_role", values), existing_nullable=False,
                              existing_server_default="serve")


def upgrade() -> None:
    op.create_table(
        "optimization_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("running_deployment_id", sa.Integer(), nullable=True),
        sa.Column("state", _enum("run_state", RUN_STATES), nullable=False),
        sa.Column("goal", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("node_name", sa.String(length=63), nullable=True),
        sa.Column("gpu", sa.String(length=128), nullable=True),
        sa.Column("price_per_hour", sa.Double(), nullable=True),
        sa.Column("baseline_revision", sa.Integer(), nullable=False),
        sa.Column("result_revision", sa.Integer(), nullable=True),
        sa.Column("bottleneck", sa.JSON(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_optimization_runs_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_runs")),
        sa.UniqueConstraint("running_deployment_id", name=op.f("uq_optimization_runs_running_deployment_id")),
    )
    op.create_index(op.f("ix_optimization_runs_deployment_id"), "optimization_runs", ["deployment_id"])
    op.create_table(
        "optimization_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("technique", sa.String(length=64), nullable=False),
        sa.Column("state", _enum("step_state", STEP_STATES), nullable=False),
        sa.Column("change", sa.JSON(), nullable=False),
        sa.Column("engine_config", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("baseline_metrics", sa.JSON(), nullable=True),
        sa.Column("gain", sa.JSON(), nullable=True),
        sa.Column("quality", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["optimization_runs.id"], name=op.f("fk_optimization_steps_run_id_optimization_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_steps")),
        sa.UniqueConstraint("run_id", "number", name=op.f("uq_optimization_steps_run_id_number")),
    )
    op.create_index(op.f("ix_optimization_steps_run_id"), "optimization_steps", ["run_id"])
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("arm", sa.String(length=1), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("state", _enum("measurement_state", MEASUREMENT_STATES), nullable=False),
        sa.Column("node_name", sa.String(length=63), nullable=False),
        sa.Column("replica_id", sa.Integer(), nullable=True),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("timeout_s", sa.Double(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("wall_s", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["step_id"], ["optimization_steps.id"], name=op.f("fk_measurements_step_id_optimization_steps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
    )
    op.create_index(op.f("ix_measurements_step_id"), "measurements", ["step_id"])
    _set_roles(REPLICA_ROLES)
    with op.batch_alter_table("replicas") as batch_op:
        batch_op.add_column(sa.Column("engine_config", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("optimization_run_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_replicas_optimization_run_id_optimization_runs"), "optimization_runs",
            ["optimization_run_id"], ["id"], ondelete="CASCADE",
        )
        batch_op.create_index(op.f("ix_replicas_optimization_run_id"), ["optimization_run_id"])


def downgrade() -> None:
    # Trial replicas have no meaning without their runs; the role constraint cannot hold them either.
    op.execute("DELETE FROM replicas WHERE role = 'trial'")
    with op.batch_alter_table("replicas") as batch_op:
        batch_op.drop_index(op.f("ix_replicas_optimization_run_id"))
        batch_op.drop_constraint(op.f("fk_replicas_optimization_run_id_optimization_runs"), type_="foreignkey")
        batch_op.drop_column("optimization_run_id")
        batch_op.drop_column("engine_config")
    _set_roles(OLD_REPLICA_ROLES)
    op.drop_index(op.f("ix_measurements_step_id"), table_name="measurements")
    op.drop_table("measurements")
    op.drop_index(op.f("ix_optimization_steps_run_id"), table_name="optimization_steps")
    op.drop_table("optimization_steps")
    op.drop_index(op.f("ix_optimization_runs_deployment_id"), table_name="optimization_runs")
    op.drop_table("optimization_runs")
