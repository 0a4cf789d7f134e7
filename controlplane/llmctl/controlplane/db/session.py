"""Engines, sessions and schema migrations for the control plane's database.

SQLite (a file under $LLMCTL_HOME) is the default; PostgreSQL is for production. Connection failures
become `Unavailable` here, at the edge, with the URL (password masked) and what to check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from llmctl import migrations
from llmctl.controlplane.errors import Conflict, InvalidArgument, Unavailable

MIGRATIONS_DIR = Path(migrations.__file__).parent
SQLITE_BUSY_TIMEOUT_S = 15.0
"""Concurrent SQLite writers queue for up to this long instead of failing with 'database is locked'."""
CONNECT_TIMEOUT_S = 5


def default_database_url(home: Path | None = None) -> str:
    """`sqlite:///$LLMCTL_HOME/llmctl.db`; creates the folder."""
    from llmctl.agent.engine.paths import llmctl_home

    folder = Path(home if home is not None else llmctl_home()).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'llmctl.db'}"


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise InvalidArgument(
            f"cannot parse database URL {str(url)!r}: use sqlite:///path/to/file.db or "
            "postgresql://user:password@host:5432/dbname"
        ) from e
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # One driver everywhere: psycopg 3 (installed with the control plane).
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise InvalidArgument(
        f"unsupported database {parsed.drivername!r} in {mask_url(parsed)}: use sqlite:/// or postgresql://"
    )


def mask_url(url: str | URL) -> str:
    """The URL as it may appear in logs and error messages: password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparseable database URL>"


def make_engine(url: str | URL, *, check: bool = True, connect_timeout: int = CONNECT_TIMEOUT_S) -> Engine:
    """An Engine for sqlite:/// or postgresql:// URLs; with `check`, connects once to fail fast."""
    parsed = _parse_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
        # Sessions are handed between threads (gRPC workers); each connection is still used by one at a time.
        connect_args["check_same_thread"] = False
    else:
        connect_args["connect_timeout"] = connect_timeout
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        event.listen(engine, "connect", _sqlite_pragmas(in_memory))
    if check:
        check_connection(engine)
    return engine


def _sqlite_pragmas(in_memory: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if not in_memory:
            # WAL: readers never block the single writer, and the writer never blocks readers.
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return on_connect


def check_connection(engine: Engine) -> None:
    """Connect once; an unreachable database raises Unavailable saying what to check."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except exc.DBAPIError as e:
        raise unavailable(engine.url, e) from e


def unavailable(url: str | URL, error: BaseException) -> Unavailable:
    orig = getattr(error, "orig", None) or error
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if "database is locked" in reason:
        advice = f"another writer held it for over {SQLITE_BUSY_TIMEOUT_S:g}s; retry, or use PostgreSQL for heavy use"
    elif make_url(url).get_backend_name() == "sqlite":
        advice = "check that the folder exists and is writable, or pass another --database-url"
    else:
        advice = "check that PostgreSQL is running and reachable and that the URL's user and database exist"
    return Unavailable(f"cannot use the database at {mask_url(url)}: {reason}; {advice}")


def session_factory(engine: Engine, *, api_key_secret: str | None = None) -> sessionmaker[Session]:
    """Sessions on `engine`; `api_key_secret` is the HMAC key services/tenants.py hashes API keys with."""
    # expire_on_commit=False: servicers convert rows to messages after the commit without reloading.
    info = {"api_key_secret": api_key_secret} if api_key_secret is not None else {}
    return sessionmaker(bind=engine, expire_on_commit=False, info=info)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block succeeds, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except (exc.OperationalError, exc.ProgrammingError) as e:
        session.rollback()
        translated = _database_error(session, e)
        if translated is None:
            raise
        raise translated from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _database_error(session: Session, error: exc.DBAPIError) -> Exception | None:
    """The error a caller can act on for a failure that is the database's state, not the caller's bug."""
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    url = session.get_bind().url
    if sqlstate == "42P01" or "no such table" in str(error.orig):
        return Unavailable(
            f"the database at {mask_url(url)} has no llmctl schema, or an old one; run `llmctl db upgrade`"
        )
    if isinstance(error, exc.ProgrammingError):
        return None
    # PostgreSQL class 40 (serialization failure, deadlock): another transaction won; the caller retries.
    if sqlstate.startswith("40"):
        return Conflict(f"the database aborted the transaction ({error.orig}); retry")
    return unavailable(url, error)


# ---- migrations ----


def _alembic_config(url: str | URL) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    config.set_main_option("timezone", "UTC")
    config.attributes["url"] = url
    return config


@contextmanager
def migration_connection(url: str | URL) -> Iterator[Any]:
    """A connection for Alembic: on SQLite, foreign keys off and real transactions around DDL."""
    engine = make_engine(url, check=False)
    if engine.dialect.name == "sqlite":
        _sqlite_migration_mode(engine)
    try:
        check_connection(engine)
        with engine.connect() as connection:
            yield connection
            if engine.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                assert not broken, f"migrations left dangling foreign keys: {broken}"
            connection.commit()
    finally:
        engine.dispose()


def _sqlite_migration_mode(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite opens transactions only before INSERT/UPDATE/DELETE, so each DDL statement would commit
        # on its own and a failed migration would stop half-way; take over transaction control instead.
        dbapi_connection.isolation_level = None
        # Batch migrations copy a table and drop the old one; with foreign keys on, the drop would cascade
        # into its children. migration_connection checks every key once the migrations have run.
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def upgrade_database(url: str | URL, revision: str = "head") -> None:
    """Migrate the schema forward to `revision` (default: the newest)."""
    from alembic import command

    _run_alembic(url, command.upgrade, revision)


def downgrade_database(url: str | URL, revision: str = "base") -> None:
    """Migrate the schema back to `revision`; "base" drops every table."""
    from alembic import command

    _run_alembic(url, command.downgrade, revision)


def _run_alembic(url: str | URL, step: Any, revision: str) -> None:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    config = _alembic_config(url)
    with migration_connection(url) as connection:
        config.attributes["connection"] = connection
        try:
            step(config, revision)
        except (CommandError, RevisionError) as e:
            raise InvalidArgument(f"cannot migrate to schema revision {revision!r}: {e}") from e


def current_revision(url: str | URL) -> str | None:
    """The schema revision the database is at; None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with migration_connection(url) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision among the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
