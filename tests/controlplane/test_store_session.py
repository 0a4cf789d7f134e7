"""Engines, sessions and connection failures: what an operator sees when the database is wrong or gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import (
    default_database_url,
    make_engine,
    session_factory,
    session_scope,
    upgrade_database,
)
from llmctl.controlplane.errors import InvalidArgument, Unavailable
from llmctl.controlplane.services.deployments import deploy, list_deployments

GONE = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/x"


def test_default_url_is_a_file_under_llmctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    assert default_database_url() == f"sqlite:///{tmp_path / 'home' / 'llmctl.db'}"
    assert (tmp_path / "home").is_dir()
    assert default_database_url(tmp_path / "other") == f"sqlite:///{tmp_path / 'other' / 'llmctl.db'}"


@pytest.mark.parametrize("connect", [make_engine, upgrade_database], ids=["make_engine", "upgrade"])
def test_unreachable_postgres_is_unavailable_with_a_masked_url(connect: object) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        connect(GONE)  # type: ignore[operator]
    assert time.monotonic() - started < 10
    message = caught.value.message
    assert "hunter2" not in message
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/x" in message
    assert "check that PostgreSQL is running" in message


def test_unwritable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="check that the folder exists"):
        make_engine(f"sqlite:///{tmp_path / 'missing' / 'llmctl.db'}")


def test_unsupported_or_garbled_urls_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match="unsupported database 'mysql'"):
        make_engine("mysql://root@localhost/llmctl")
    with pytest.raises(InvalidArgument, match="cannot parse database URL"):
        make_engine("not a url")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_plain_postgresql_urls_use_psycopg(db_url: str) -> None:
    engine = make_engine(db_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'llmctl.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    finally:
        engine.dispose()


def test_session_scope_commits_on_success_and_rolls_back_on_error(db_factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), session_scope(db_factory) as session:
        deploy(session, name="chat", model="m", engine_config={})
        raise RuntimeError("caller failed after the deploy")
    with session_scope(db_factory) as session:
        assert list_deployments(session) == []
        deploy(session, name="chat", model="m", engine_config={})
    with session_scope(db_factory) as session:
        assert [d.name for d in list_deployments(session)] == ["chat"]


def test_a_database_without_the_schema_says_to_upgrade(blank_db_url: str) -> None:
    engine = make_engine(blank_db_url)
    try:
        with pytest.raises(Unavailable, match="has no llmctl schema.*run `llmctl db upgrade`"):
            with session_scope(session_factory(engine)) as session:
                list_deployments(session)
    finally:
        engine.dispose()


@pytest.mark.parametrize("blank_db_url", ["postgres"], indirect=True)  # a SQLite file cannot go away
def test_a_server_that_goes_away_mid_session_is_unavailable(blank_db_url: str) -> None:
    engine = make_engine(blank_db_url)
    try:
        with (
            pytest.raises(Unavailable, match="cannot use the database"),
            session_scope(session_factory(engine)) as s,
        ):
            pid = s.execute(text("SELECT pg_backend_pid()")).scalar()
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            s.execute(text("SELECT 1"))
    finally:
        engine.dispose()
