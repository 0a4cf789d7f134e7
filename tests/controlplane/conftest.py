"""Real databases for control-plane tests: a SQLite file and a throwaway PostgreSQL database.

`db_url` yields an upgraded, empty database on each backend; `db_factory` a sessionmaker bound to it.
Each backend's schema is migrated once per run into a template, which every test then copies (a file
copy for SQLite, CREATE DATABASE ... TEMPLATE for PostgreSQL), so tests stay fast and isolated.
Set LLMCTL_TEST_POSTGRES to point at another server (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import make_engine, session_factory, upgrade_database

POSTGRES_ADMIN_URL = os.environ.get("LLMCTL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
BACKENDS = ["sqlite", "postgres"]


def _admin_conninfo() -> str:
    url = make_url(POSTGRES_ADMIN_URL)
    parts = {"host": url.host, "port": url.port, "user": url.username, "password": url.password}
    return " ".join(f"{key}={value}" for key, value in parts.items() if value) + " dbname=postgres"


def _sqlalchemy_url(database: str) -> str:
    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=database)
    return url.render_as_string(hide_password=False)


def _admin(sql: str) -> None:
    try:
        with psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql)  # type: ignore[arg-type]
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL for the control-plane tests is unreachable at {POSTGRES_ADMIN_URL}: {e}")


def create_postgres_database(template: str | None = None) -> str:
    """A new, uniquely named database (optionally a copy of `template`); returns its name."""
    name = f"llmctl_test_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_postgres_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated schema per backend: a SQLite file path and a PostgreSQL database name."""
    sqlite_file = tmp_path_factory.mktemp("sqlite-template") / "llmctl.db"
    upgrade_database(f"sqlite:///{sqlite_file}")
    templates = {"sqlite": str(sqlite_file)}
    postgres: str | None = None
    try:
        postgres = create_postgres_database()
        upgrade_database(_sqlalchemy_url(postgres))
        templates["postgres"] = postgres
        yield templates
    finally:
        if postgres is not None:
            drop_postgres_database(postgres)


@pytest.fixture(params=BACKENDS)
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no schema) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmctl.db'}"
        return
    name = create_postgres_database()
    try:
        yield _sqlalchemy_url(name)
    finally:
        drop_postgres_database(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _templates: dict[str, str]) -> Iterator[str]:
    """An upgraded, empty database on each backend, private to the test."""
    if request.param == "sqlite":
        path = tmp_path / "llmctl.db"
        shutil.copyfile(_templates["sqlite"], path)
        yield f"sqlite:///{path}"
        return
    name = create_postgres_database(template=_templates["postgres"])
    try:
        yield _sqlalchemy_url(name)
    finally:
        drop_postgres_database(name)


TEST_API_KEY_SECRET = "test-api-key-secret"


@pytest.fixture
def db_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A sessionmaker on the test's upgraded database (API keys hashed with TEST_API_KEY_SECRET)."""
    engine = make_engine(db_url)
    try:
        yield session_factory(engine, api_key_secret=TEST_API_KEY_SECRET)
    finally:
        engine.dispose()
