"""`llmctl nodes | drain | events`: the agents' nodes and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmctl.controlplane.commands.common import (
    AdminTokenOpt,
    ControlPlaneOpt,
    Output,
    OutputOpt,
    admin_client,
    fail,
    print_json,
    print_json_line,
    print_table,
)
from llmctl.controlplane.commands.render import ago, event_dict, node_dict, number, size, when

EVENT_COLUMNS = ["ID", "TIME", "KIND", "DEPLOYMENT", "NODE", "MESSAGE"]


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes)
    app.command("drain")(drain)
    app.command("undrain")(undrain)
    app.command("events")(events)


def nodes(
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Nodes (one per agent) with their health, replicas and latest GPU and host telemetry."""
    with admin_client(control_plane, admin_token) as client:
        found = [node_dict(n) for n in client.list_nodes()]
    if output == Output.json:
        print_json(found)
        return
    if not found:
        typer.echo(
            "no nodes yet; start an agent with `llmctl agent --control-plane HOST:PORT --join-token T`"
        )
        return
    print_table(
        None,
        ["NODE", "STATE", "HOST", "REPLICAS", "GPUS", "CPU", "MEMORY", "HEARTBEAT"],
        [
            [
                n["name"],
                n["state"],
                n["hostname"],
                f"{n['replica_count']}/{n['max_replicas']}",
                _gpus(n),
                number(n["host"] and n["host"]["cpu_percent"], 0, "%"),
                n["host"]
                and f"{size(n['host']['memory_used_bytes'])}/{size(n['host']['memory_total_bytes'])}",
                ago(n["last_heartbeat_at"]),
            ]
            for n in found
        ],
    )


def drain(
    node: Annotated[str, typer.Argument(help="Node name (see `llmctl nodes`)")],
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Take a node out of placement; its replicas move elsewhere once their replacements are ready."""
    with admin_client(control_plane, admin_token) as client:
        found = node_dict(client.drain_node(node))
    if output == Output.json:
        print_json(found)
    else:
        typer.echo(f"{found['name']}: {found['state']}; its replicas move to other nodes")


def undrain(
    node: Annotated[str, typer.Argument(help="A drained node's name")],
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Put a drained node back into placement."""
    with admin_client(control_plane, admin_token) as client:
        found = node_dict(client.undrain_node(node))
    if output == Output.json:
        print_json(found)
    else:
        typer.echo(f"{found['name']}: {found['state']}; it takes new replicas again")


def events(
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Only this deployment's")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show the newest N events first")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops)")
    ] = False,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """The audit log: every deploy, rollback, scale, placement and failure, oldest first.

    With --output json: a JSON array, or with --follow one JSON object per line.
    """
    if limit < 0:
        fail(f"--limit must be >= 0, got {limit}")
    with admin_client(control_plane, admin_token) as client:
        recent = _newest(client, deployment, limit)
        if output == Output.json and not follow:
            print_json([event_dict(e) for e in recent])
            return
        if not follow:
            print_table(
                None,
                EVENT_COLUMNS,
                [[e.id, when(e.at), e.kind, e.deployment or None, e.node or None, e.message] for e in recent],
            )
            return
        _print_events(recent, output)
        if follow:
            _follow(client, deployment, recent[-1].id if recent else client.last_event_id(deployment), output)


def _newest(client: Any, deployment: str | None, limit: int) -> list[Any]:
    """The newest `limit` events, oldest first."""
    return client.list_events(deployment=deployment, limit=limit, newest=True) if limit else []


def _follow(client: Any, deployment: str | None, after: int, output: Output) -> None:
    watch = client.watch_events(after_id=after, deployment=deployment)
    try:
        for event in watch:
            _print_events([event], output)
    except KeyboardInterrupt:
        pass
    finally:
        watch.cancel()


def _print_events(found: list[Any], output: Output) -> None:
    if output == Output.json:
        for event in found:
            print_json_line(event_dict(event))
        return
    for event in found:
        typer.echo(
            f"{event.id:>6}  {when(event.at)}  {event.kind:<22} {event.deployment or '-':<16} "
            f"{event.node or '-':<10} {event.message}"
        )


def _gpus(node: dict[str, Any]) -> str:
    if not node["gpus"]:
        return "none (host telemetry)" if node["source"] == "HOST" else "none"
    parts = []
    for gpu in node["gpus"]:
        util = number(gpu["utilization_percent"], 0, "%") or "n/a"
        memory = gpu["memory_used_bytes"]
        total = gpu["memory_total_bytes"]
        used = f"{size(memory)}/{size(total)}" if memory is not None and total is not None else "n/a"
        parts.append(f"{gpu['index']}:{gpu['name']} {util} {used}")
    return "; ".join(parts)
