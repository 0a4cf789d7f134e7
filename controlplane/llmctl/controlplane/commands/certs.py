"""`llmctl certs init-ca | server | client`: a fleet's own CA and the certificates TLS and mutual TLS need.

    llmctl certs init-ca                            $LLMCTL_HOME/tls/ca.crt + ca.key (the key stays here)
    llmctl certs server --host cp.example --host 10.0.0.5   server.crt + server.key for `llmctl server`
    llmctl certs client gpu-7                       gpu-7.crt + gpu-7.key for that agent (or an operator)

Copy ca.crt to every agent and operator, and each client's .crt/.key to that client only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmctl.controlplane.commands.common import home, reported_errors

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", show_default=False, help="Where the CA and certificates live (default: $LLMCTL_HOME/tls)"),
]
DaysOpt = Annotated[int, typer.Option("--days", help="Days the certificate is valid")]

certs_app = typer.Typer(help="A CA of this fleet's own and the certificates for TLS and mutual TLS.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")


def folder(given: Path | None) -> Path:
    return given if given is not None else home() / "tls"


@certs_app.command("init-ca")
def init_ca(directory: DirOpt = None, days: DaysOpt = 3650) -> None:
    """Create the CA (refuses to replace one: every certificate it signed would stop working)."""
    from llmctl.controlplane import pki

    with reported_errors():
        made = pki.init_ca(folder(directory), days=days)
    typer.echo(f"CA certificate {made.cert} (give it to agents and operators: --ca)\nCA key         {made.key} "
               "(keep it here, mode 0600)")


@certs_app.command("server")
def server(
    hosts: Annotated[
        list[str] | None,
        typer.Option("--host", show_default=False,
                     help="A name or IP address agents and clients dial (repeat it); loopback is always included"),
    ] = None,
    directory: DirOpt = None,
    days: DaysOpt = 365,
) -> None:
    """Issue the control plane's certificate (gRPC and the gateway): `llmctl server --tls-cert --tls-key`."""
    from llmctl.controlplane import pki

    with reported_errors():
        made = pki.issue_server(folder(directory), hosts or [], days=days)
    typer.echo(f"server certificate {made.cert}\nserver key         {made.key}\n"
               f"run: llmctl server --tls-cert {made.cert} --tls-key {made.key} "
               f"--client-ca {folder(directory) / 'ca.crt'}")


@certs_app.command("client")
def client(
    name: Annotated[str, typer.Argument(help="An agent's node name, or an operator's name")],
    directory: DirOpt = None,
    days: DaysOpt = 365,
) -> None:
    """Issue a client certificate for mutual TLS: `llmctl agent --ca --cert --key`, or `llmctl --ca --cert --key`
    for an operator."""
    from llmctl.controlplane import pki

    with reported_errors():
        made = pki.issue_client(folder(directory), name, days=days)
    typer.echo(f"client certificate {made.cert}\nclient key         {made.key}")
