"""security: how each API key is hashed (HMAC with a server secret, or the legacy sha256), and the audit log

Keys stored before this migration are plain sha256; they are marked "sha256" here and rehashed with HMAC by
the control plane the first time each one authenticates. Downgrading drops the marker: keys already rehashed
no longer match what the older code computes, so their tenants need new keys.

Revision ID: c7d2e4f81a36
Revises: a41c7e9b2d10
Create Date: 2026-12-07 16:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7d2e4f81a36"
down_revision: str | None = "a41c7e9b2d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default marks the rows already there as legacy; new rows always name their scheme.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scheme", sa.String(length=16), nullable=False, server_default="sha256"))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scheme", server_default=None, existing_type=sa.String(length=16),
                           existing_nullable=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scheme")
