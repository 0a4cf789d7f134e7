"""What every operator command shares: where the control plane is, the admin token, errors and output.

Exit codes: 0 done; 2 the request was wrong (bad flags, unknown deployment, conflict, bad token);
1 the system could not do it (control plane unreachable, no healthy node, rollout failed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from llmctl.controlplane.errors import (
    AlreadyExists,
    Conflict,
    ControlPlaneError,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)

if TYPE_CHECKING:
    from llmctl.controlplane.client import AdminClient
    from llmctl.controlplane.tls import ClientTls

DEFAULT_CONTROL_PLANE = "127.0.0.1:50051"
_tls_flags: tuple[Path | None, Path | None, Path | None] = (None, None, None)
"""`llmctl --ca --cert --key`, set by the root command's callback on every invocation before the subcommand runs
(one process runs one command; a test's CliRunner runs the callback again each time)."""
UP_FILE = "up.json"
ADMIN_TOKEN_FILE = "admin_token"
EXIT_SYSTEM = 1
EXIT_REQUEST = 2
# The caller asked for something wrong; anything else is the system failing to do it.
REQUEST_ERRORS = (NotFound, AlreadyExists, Conflict, Unauthenticated, Forbidden, InvalidArgument)


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table for people, json for scripts (stable keys)")
]
ControlPlaneOpt = Annotated[
    str | None,
    typer.Option(
        "--control-plane",
        envvar="LLMCTL_CONTROL_PLANE",
        help=f"HOST:PORT of the control plane's gRPC API (default: from $LLMCTL_HOME/{UP_FILE}, "
        f"else {DEFAULT_CONTROL_PLANE})",
        show_default=False,
    ),
]
AdminTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="LLMCTL_ADMIN_TOKEN",
        help=f"Admin token (default: $LLMCTL_ADMIN_TOKEN, else $LLMCTL_HOME/{ADMIN_TOKEN_FILE}, "
        f"else $LLMCTL_HOME/{UP_FILE})",
        show_default=False,
    ),
]


CaOpt = Annotated[
    Path | None,
    typer.Option("--ca", envvar="LLMCTL_CA", show_default=False,
                 help="CA certificate that signed the control plane's (its gRPC speaks TLS)"),
]
CertOpt = Annotated[
    Path | None,
    typer.Option("--cert", envvar="LLMCTL_CERT", show_default=False,
                 help="Client certificate, for a control plane that requires one (--client-ca); with --key"),
]
KeyOpt = Annotated[
    Path | None, typer.Option("--key", envvar="LLMCTL_KEY", show_default=False, help="The client certificate's key"),
]


def fail(message: str, code: int = EXIT_REQUEST) -> NoReturn:
    """One red line on stderr, no traceback, then exit with `code`."""
    # Messages may quote a replica's log tail over several lines; the operator still gets one line.
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    typer.secho(f"error: {one_line}", fg="red", err=True)
    raise typer.Exit(code=code)


def exit_code(error: ControlPlaneError) -> int:
    return EXIT_REQUEST if isinstance(error, REQUEST_ERRORS) else EXIT_SYSTEM


def home() -> Path:
    from llmctl.agent.engine.paths import llmctl_home

    return llmctl_home()


def read_up_file(folder: Path | None = None) -> dict[str, Any]:
    """$LLMCTL_HOME/up.json as `llmctl up` wrote it, or {} when there is none (or it is unreadable)."""
    from llmctl.controlplane.commands.up_state import read_state

    return read_state(folder or home())


def resolve_control_plane(given: str | None) -> str:
    address = given or read_up_file().get("control_plane") or DEFAULT_CONTROL_PLANE
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--control-plane must be HOST:PORT (e.g. {DEFAULT_CONTROL_PLANE}), got {address!r}")
    return str(address)


def resolve_admin_token(given: str | None) -> str:
    if given:
        return given
    token_file = home() / ADMIN_TOKEN_FILE
    try:
        token = token_file.read_text().strip()
    except OSError:
        token = ""
    token = token or str(read_up_file().get("admin_token") or "")
    if not token:
        fail(
            "no admin token: pass --admin-token, set LLMCTL_ADMIN_TOKEN, or run where the control plane "
            f"keeps it ({token_file})"
        )
    return token


def remember_tls_flags(ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """The root command's --ca/--cert/--key, for resolve_client_tls in whichever subcommand runs."""
    global _tls_flags
    _tls_flags = (ca, cert, key)


def resolve_client_tls(address: str) -> ClientTls | None:
    """TLS for `address`: `llmctl --ca/--cert/--key` (or $LLMCTL_CA, $LLMCTL_CERT, $LLMCTL_KEY), else what
    `llmctl up --tls` recorded in up.json when address is that control plane's, else None (plaintext)."""
    from llmctl.controlplane.errors import InvalidArgument
    from llmctl.controlplane.tls import ClientTls

    ca, cert, key = _tls_flags
    up = read_up_file()
    if ca is None and cert is None and key is None and isinstance(up.get("tls"), dict) \
            and up.get("control_plane") == address:
        ca, cert, key = (Path(up["tls"][k]) if up["tls"].get(k) else None for k in ("ca", "cert", "key"))
    if ca is None and cert is None and key is None:
        return None
    try:
        return ClientTls(ca=ca, cert=cert, key=key)
    except InvalidArgument as e:
        fail(e.message)


@contextmanager
def admin_client(control_plane: str | None, admin_token: str | None) -> Iterator[AdminClient]:
    """A connected AdminClient; any control-plane error inside the block becomes one line and an exit code."""
    address = resolve_control_plane(control_plane)
    token = resolve_admin_token(admin_token)
    tls = resolve_client_tls(address)
    from llmctl.controlplane.client import AdminClient

    client = AdminClient(address, token, tls=tls)
    try:
        with reported_errors():
            yield client
    finally:
        client.close()


@contextmanager
def reported_errors() -> Iterator[None]:
    try:
        yield
    except ControlPlaneError as e:
        fail(e.message, exit_code(e))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False):
    """A rich Console; wide when not a terminal so tables piped to files or tests are not squeezed."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160, highlight=False)


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    out = console()
    if title:
        out.print(
            title, style="bold", markup=False
        )  # above, not as the table's title: that wraps to its width
    table = Table(show_lines=False, box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not markup: an error or event message may hold brackets rich would read as style tags.
        table.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    out.print(table)


def default_command_group(default: str) -> type[TyperGroup]:
    """A command group in which `llmctl GROUP NAME ...` means `llmctl GROUP <default> NAME ...` unless NAME is
    one of its subcommands (or an option), as `llmctl quality NAME` and `llmctl optimize NAME` do."""

    class DefaultCommandGroup(TyperGroup):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            if args and args[0] not in self.commands and not args[0].startswith("-"):
                args = [default, *args]
            return super().parse_args(ctx, args)

    return DefaultCommandGroup
