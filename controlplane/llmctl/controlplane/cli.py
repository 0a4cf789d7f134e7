"""The root `llmctl` command. Engine-side commands come from agent.cli; imports stay lazy, so a GPU box
running only `llmctl serve` never imports grpc or sqlalchemy."""

from __future__ import annotations

import typer

from llmctl.agent.cli import register_engine_commands
from llmctl.controlplane.commands import (
    autoscale,
    certs,
    dashboard,
    deployments,
    fleet,
    optimize,
    processes,
    prompts,
    quality,
    route,
    security,
    tenants,
    traffic,
)
from llmctl.controlplane.commands.common import CaOpt, CertOpt, KeyOpt, remember_tls_flags
from llmctl.controlplane.db.cli import db_app

HELP = """llmctl: serve, measure and optimize self-hosted LLM inference.

Exit codes: 0 done; 2 the request was wrong (invalid flags, unknown deployment, conflict, bad admin
token); 1 the system could not do it (control plane unreachable, no healthy node, rollout failed).
Operator commands find the control plane with --control-plane (default: $LLMCTL_HOME/up.json, else
127.0.0.1:50051) and authenticate with --admin-token (default: $LLMCTL_ADMIN_TOKEN, else
$LLMCTL_HOME/admin_token, else up.json). A control plane with TLS wants `llmctl --ca FILE [--cert FILE
--key FILE] COMMAND` (or $LLMCTL_CA, $LLMCTL_CERT, $LLMCTL_KEY); after `llmctl up --tls` up.json has them.
"""

app = typer.Typer(
    name="llmctl",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ca: CaOpt = None, cert: CertOpt = None, key: KeyOpt = None) -> None:
    remember_tls_flags(ca, cert, key)


register_engine_commands(app)
processes.register(app)
deployments.register(app)
fleet.register(app)
tenants.register(app)
quality.register(app)
optimize.register(app)
traffic.register(app)
prompts.register(app)
dashboard.register(app)
autoscale.register(app)
route.register(app)
security.register(app)
certs.register(app)
app.add_typer(db_app, name="db")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
