"""`llmctl db`: create, migrate and inspect the control plane's database schema."""

from __future__ import annotations

from typing import Annotated

import typer

db_app = typer.Typer(help="Create and migrate the control plane's database.", no_args_is_help=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LLMCTL_DATABASE_URL",
        help="sqlite:///path or postgresql://user:pass@host/db (default: $LLMCTL_HOME/llmctl.db)",
        show_default=False,
    ),
]


def _fail(message: str) -> None:
    """Exit with code 2 and one line saying what to fix (as agent.cli.fail does)."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)


def _message(error: Exception) -> str:
    from llmctl.controlplane.errors import ControlPlaneError

    if isinstance(error, ControlPlaneError):
        return error.message
    # A statement failed inside a migration: its first line says which, without the SQL dump.
    first_line = (str(getattr(error, "orig", error)).strip().splitlines() or [type(error).__name__])[0]
    return f"migration failed and was rolled back to the last good revision: {first_line}"


def _url(database_url: str | None) -> str:
    from llmctl.controlplane.db.session import default_database_url

    return database_url or default_database_url()


@db_app.command()
def upgrade(
    database_url: DatabaseUrl = None,
    revision: Annotated[str, typer.Option("--revision", help="Schema revision to migrate to")] = "head",
) -> None:
    """Create the schema, or migrate it forward to the newest (or the given) revision."""
    from sqlalchemy.exc import DBAPIError

    from llmctl.controlplane.db.session import current_revision, mask_url, upgrade_database
    from llmctl.controlplane.errors import ControlPlaneError

    url = _url(database_url)
    try:
        upgrade_database(url, revision)
        typer.echo(f"{mask_url(url)} is at schema revision {current_revision(url)}")
    except (ControlPlaneError, DBAPIError) as e:
        _fail(_message(e))


@db_app.command()
def downgrade(
    database_url: DatabaseUrl = None,
    revision: Annotated[str, typer.Option("--revision", help="Schema revision to go back to")] = "base",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
) -> None:
    """Migrate the schema back; the default, base, drops every table and all data in them."""
    from sqlalchemy.exc import DBAPIError

    from llmctl.controlplane.db.session import current_revision, downgrade_database, mask_url
    from llmctl.controlplane.errors import ControlPlaneError

    url = _url(database_url)
    if not yes and not _confirm(f"Downgrade {mask_url(url)} to {revision}? Data in dropped tables is lost"):
        _fail("downgrade cancelled; pass --yes to skip this question")
    try:
        downgrade_database(url, revision)
        typer.echo(f"{mask_url(url)} is at schema revision {current_revision(url) or 'base (empty)'}")
    except (ControlPlaneError, DBAPIError) as e:
        _fail(_message(e))


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question)
    except typer.Abort:  # no terminal to answer on: the safe answer is no
        return False


@db_app.command()
def current(database_url: DatabaseUrl = None) -> None:
    """Print the database's schema revision and whether it is the newest."""
    from llmctl.controlplane.db.session import current_revision, head_revision
    from llmctl.controlplane.errors import ControlPlaneError

    try:
        revision = current_revision(_url(database_url))
    except ControlPlaneError as e:
        _fail(e.message)
        return
    head = head_revision()
    if revision is None:
        typer.echo("no schema yet; run `llmctl db upgrade`")
    elif revision == head:
        typer.echo(f"{revision} (head)")
    else:
        typer.echo(f"{revision} (head is {head}; run `llmctl db upgrade`)")
