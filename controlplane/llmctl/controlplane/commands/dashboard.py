"""`llmctl dashboard`: the operator's terminal UI (tui/) on a control plane's AdminService.

It finds the control plane and the admin token the way every operator command does (flags, then
$LLMCTL_CONTROL_PLANE / $LLMCTL_ADMIN_TOKEN, then $LLMCTL_HOME), so after `llmctl up` it needs no flags.
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.controlplane.commands.common import (
    AdminTokenOpt,
    ControlPlaneOpt,
    fail,
    resolve_admin_token,
    resolve_client_tls,
    resolve_control_plane,
)

RefreshOpt = Annotated[
    float,
    typer.Option("--refresh", help="Seconds between polls of nodes and deployments (events stream live)"),
]


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)


def dashboard(
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
    refresh: RefreshOpt = 2.0,
) -> None:
    """Watch the fleet and act on it: nodes and GPUs, deployments, revisions, events (press ? inside).

    Deploy, roll back, scale and drain ask for confirmation before anything is sent.
    """
    if not 0.1 <= refresh <= 3600:
        fail(f"--refresh must be between 0.1 and 3600 seconds, got {refresh:g}")
    address = resolve_control_plane(control_plane)
    token = resolve_admin_token(admin_token)
    tls = resolve_client_tls(address)
    from llmctl.tui.app import DashboardApp
    from llmctl.tui.feed import LiveFeed

    DashboardApp(LiveFeed(address, token, poll_interval_s=refresh, tls=tls)).run()


if __name__ == "__main__":  # before it is mounted on `llmctl`: python -m controlplane.commands.dashboard
    typer.run(dashboard)
