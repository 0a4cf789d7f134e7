"""Alembic environment. controlplane.db.session passes the URL or an open connection in config.attributes.

For new migrations from the command line (alembic.ini at the repo root):
    .venv/bin/alembic -x url=sqlite:////tmp/scratch.db upgrade head
    .venv/bin/alembic -x url=sqlite:////tmp/scratch.db revision --autogenerate -m "add measurements"
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from llmctl.controlplane.db.models import Base
from llmctl.controlplane.db.session import default_database_url, migration_connection

config = context.config
if config.config_file_name is not None:  # the alembic command line; llmctl configures logging itself
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata

OPTIONS = {
    "target_metadata": target_metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead (plain ALTER elsewhere).
    "render_as_batch": True,
    # A failed step leaves the database at the last good revision instead of half-way through a step.
    "transaction_per_migration": True,
    # SQLite can roll DDL back too, once migration_connection takes over pysqlite's transaction handling.
    "transactional_ddl": True,
    "compare_type": True,
}


def database_url() -> str:
    """From controlplane.db.session; for the alembic command line, `-x url=...` or the default database."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return str(url or default_database_url())


def run_migrations_offline() -> None:
    context.configure(url=database_url(), literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    with migration_connection(database_url()) as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
