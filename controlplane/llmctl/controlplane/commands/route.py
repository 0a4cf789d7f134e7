"""`llmctl route DEPLOYMENT --to SMALL --rule RULE [--max-in-flight N]` sends the deployment's simple requests to
a cheaper companion deployment; `llmctl route DEPLOYMENT --off` stops it; `llmctl route DEPLOYMENT` shows it.

Rules: `max-prompt-tokens=N` (the prompt's estimated length), `regex=PATTERN` (searched in the user's last
message or the completion prompt), `classifier` (the project's simple/complex classifier). A companion with no
ready replica, every replica saturated, or failing, sends the request back to the deployment. docs/routing.md
has the decision path and what was measured."""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.controlplane.commands.common import (
    AdminTokenOpt,
    ControlPlaneOpt,
    Output,
    OutputOpt,
    admin_client,
    fail,
    print_json,
)


def register(app: typer.Typer) -> None:
    app.command("route")(route)


def route(
    deployment: Annotated[str, typer.Argument(help="The deployment whose simple requests are routed")],
    to: Annotated[str | None, typer.Option("--to", help="The companion deployment that serves them",
                                           show_default=False)] = None,
    rule: Annotated[str | None, typer.Option(
        "--rule", help="Which requests are simple: max-prompt-tokens=N, regex=PATTERN or classifier",
        show_default=False)] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        "--max-in-flight", help="Requests per companion replica beyond which it counts as saturated and the "
        "deployment serves instead (default: the companion engine's max_num_seqs)", show_default=False)] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop routing: the deployment serves every request")] = False,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Set, show or remove a deployment's model route to a cheaper companion deployment."""
    if off and (to is not None or rule is not None or max_in_flight is not None):
        fail("--off removes the route: give it alone, without --to, --rule or --max-in-flight")
    setting = to is not None or rule is not None or max_in_flight is not None
    if setting and (to is None or rule is None):
        fail("a route needs both --to SMALL and --rule (max-prompt-tokens=N, regex=PATTERN or classifier)")
    if to is not None and to == deployment:
        fail(f"--to must name another deployment: {deployment!r} cannot be its own companion")
    if max_in_flight is not None and max_in_flight < 1:
        fail(f"--max-in-flight must be >= 1, got {max_in_flight}")
    if rule is not None:
        from llmctl.controlplane.errors import InvalidArgument
        from llmctl.controlplane.gateway.model_route import parse_rule

        try:
            parse_rule(rule)
        except InvalidArgument as e:
            fail(e.message)
    with admin_client(control_plane, admin_token) as client:
        if off:
            found = client.set_model_route(deployment, off=True)
        elif setting:
            assert to is not None and rule is not None
            found = client.set_model_route(deployment, companion=to, rule=rule, max_in_flight=max_in_flight or 0)
        else:
            found = client.get_model_route(deployment)
    shown = {"deployment": found.deployment, "companion": found.companion or None, "rule": found.rule or None,
             "max_in_flight": found.max_in_flight or None}
    if output == Output.json:
        print_json(shown)
        return
    if not found.companion:
        typer.echo(f"{found.deployment}: no route; the deployment serves every request")
        return
    limit = f"{found.max_in_flight} per replica" if found.max_in_flight else "its engine's max_num_seqs per replica"
    typer.echo(f"{found.deployment}: requests matching {found.rule} go to {found.companion} "
               f"(saturated at {limit}; failing or saturated, {found.deployment} serves them)")
