"""The migrations build exactly the ORM's schema, undo it completely, and can build it again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from llmctl.controlplane.db import session
from llmctl.controlplane.db.models import Base
from llmctl.controlplane.db.session import (
    current_revision,
    downgrade_database,
    head_revision,
    make_engine,
    upgrade_database,
)
from llmctl.controlplane.errors import InvalidArgument


def schema_differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_matches_the_models(blank_db_url: str) -> None:
    assert current_revision(blank_db_url) is None

    upgrade_database(blank_db_url)
    assert current_revision(blank_db_url) == head_revision()
    assert schema_differences(blank_db_url) == []
    assert set(Base.metadata.tables) <= table_names(blank_db_url)

    downgrade_database(blank_db_url)
    assert current_revision(blank_db_url) is None
    assert table_names(blank_db_url) <= {"alembic_version"}

    upgrade_database(blank_db_url)
    assert schema_differences(blank_db_url) == []


def test_current_revision_foreign_keys_survive_batch_migration(blank_db_url: str) -> None:
    # SQLite adds these cycle-closing keys by rebuilding the table; they must really be there.
    upgrade_database(blank_db_url)
    engine = make_engine(blank_db_url)
    try:
        keys = inspect(engine).get_foreign_keys("deployments")
    finally:
        engine.dispose()
    assert sorted((k["constrained_columns"], k["referred_table"]) for k in keys) == [
        (["current_revision_id"], "revisions"),
        (["quality_reference_revision_id"], "revisions"),
    ]


def test_unknown_schema_revision_is_a_clear_error(db_url: str) -> None:
    with pytest.raises(InvalidArgument, match="nosuchrev"):
        upgrade_database(db_url, "nosuchrev")


FAILING_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "ffffffffffff"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("INSERT INTO half_done (id) VALUES (1)")
    raise RuntimeError("migration bug")


def downgrade():
    pass
"""


def test_a_failing_migration_leaves_the_last_good_revision(
    blank_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(session.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "2099_01_01_ffffffffffff_broken.py").write_text(
        FAILING_MIGRATION.format(down=head_revision())
    )
    good_head = head_revision()
    monkeypatch.setattr(session, "MIGRATIONS_DIR", scripts)

    with pytest.raises(RuntimeError, match="migration bug"):
        upgrade_database(blank_db_url)
    # Each migration commits on its own: the good one stays, none of the broken one does (DDL included).
    assert current_revision(blank_db_url) == good_head
    assert "half_done" not in table_names(blank_db_url)
    assert schema_differences(blank_db_url) == []
