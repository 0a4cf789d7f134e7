"""`llmctl server | agent | up | down`: the long-running processes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from llmctl.controlplane.commands.common import EXIT_SYSTEM, fail, home, reported_errors


def register(app: typer.Typer) -> None:
    app.command("server")(server)
    app.command("agent")(agent)
    app.command("up")(up)
    app.command("down")(down)


def server(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="LLMCTL_DATABASE_URL",
            show_default=False,
            help="sqlite:///path or postgresql://user:pass@host/db (default: $LLMCTL_HOME/llmctl.db)",
        ),
    ] = None,
    grpc_host: Annotated[
        str, typer.Option("--grpc-host", help="Address for agents and llmctl")
    ] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="0 picks a free port")] = 50051,
    gateway_host: Annotated[
        str, typer.Option("--gateway-host", help="Address of the OpenAI API")
    ] = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option("--gateway-port", help="0 picks a free port")] = 8000,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token", show_default=False, help="Default: read (or create) $LLMCTL_HOME/admin_token"
        ),
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option(
            "--join-token",
            envvar="LLMCTL_JOIN_TOKEN",
            show_default=False,
            help="Default: read (or create) $LLMCTL_HOME/join_token",
        ),
    ] = None,
    node_timeout: Annotated[
        float, typer.Option("--node-timeout", help="Seconds without a heartbeat before a node is unhealthy")
    ] = 15.0,
    rollout_timeout: Annotated[
        float, typer.Option("--rollout-timeout", help="Seconds a new revision may take to become ready")
    ] = 300.0,
    price_table: Annotated[
        Path | None,
        typer.Option("--price-table", help="JSON file: GPU prices for the gateway's cost figures"),
    ] = None,
    quality_retention: Annotated[
        float,
        typer.Option("--quality-retention", help="Seconds stored quality samples (prompts, answers) are kept"),
    ] = 7 * 24 * 3600.0,
    traffic_retention: Annotated[
        float,
        typer.Option("--traffic-retention",
                     help="Seconds recorded traffic (request shapes, no content; `llmctl traffic`) is kept"),
    ] = 7 * 24 * 3600.0,
) -> None:
    """Run the control plane: gRPC for agents and llmctl, the OpenAI-compatible gateway, the reconciler."""
    for flag, port in (("--grpc-port", grpc_port), ("--gateway-port", gateway_port)):
        if not 0 <= port < 65536:
            fail(f"{flag} must be a port between 0 and 65535, got {port}")
    for flag, seconds in (("--node-timeout", node_timeout), ("--rollout-timeout", rollout_timeout),
                          ("--quality-retention", quality_retention), ("--traffic-retention", traffic_retention)):
        if not seconds > 0:
            fail(f"{flag} must be a number of seconds > 0, got {seconds}")
    if price_table is not None and not price_table.is_file():
        fail(f"--price-table {price_table} is not a file")
    from llmctl.controlplane.server import ServerConfig, run_server

    with reported_errors():
        config = ServerConfig(
            database_url=database_url,
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            gateway_host=gateway_host,
            gateway_port=gateway_port,
            admin_token=admin_token,
            join_token=join_token,
            node_timeout_s=node_timeout,
            rollout_timeout_s=rollout_timeout,
            price_table=str(price_table) if price_table else None,
            quality_retention_s=quality_retention,
            traffic_retention_s=traffic_retention,
        )
        try:
            run_server(config)
        except (OSError, RuntimeError) as e:  # e.g. a port already in use
            fail(f"the control plane could not start: {e}", EXIT_SYSTEM)


def agent(
    control_plane: Annotated[
        str,
        typer.Option("--control-plane", envvar="LLMCTL_CONTROL_PLANE", help="HOST:PORT of the control plane"),
    ],
    join_token: Annotated[
        str,
        typer.Option(
            "--join-token",
            envvar="LLMCTL_JOIN_TOKEN",
            help="From $LLMCTL_HOME/join_token on the control-plane host",
        ),
    ],
    node_name: Annotated[str | None, typer.Option("--node-name", help="Default: this host's name")] = None,
    max_replicas: Annotated[
        int | None,
        typer.Option("--max-replicas", help="Most replicas on this node (default: one per GPU, or one per CPU "
                     "core on a host without GPUs, each replica pinned to its own cores; more oversubscribes)"),
    ] = None,
    replica_host: Annotated[
        str, typer.Option("--replica-host", help="Address replicas bind; the gateway must reach it")
    ] = "127.0.0.1",
    log_dir: Annotated[
        Path | None, typer.Option("--log-dir", help="Replica logs (default: $LLMCTL_HOME/logs/replicas)")
    ] = None,
) -> None:
    """Run this host's agent: join the control plane, report telemetry, run the replicas it is given."""
    from llmctl.agent.daemon import AgentConfig, AgentConfigError, run_agent

    try:
        config = AgentConfig(
            control_plane=control_plane,
            join_token=join_token,
            node_name=node_name,
            max_replicas=max_replicas,
            replica_host=replica_host,
            log_dir=log_dir,
        )
    except AgentConfigError as e:
        fail(str(e))
    run_agent(config)


def up(
    model: Annotated[
        str, typer.Option("--model", help="Registered name (pulled first), HF folder, .gguf file or hub id")
    ] = "smollm2-135m",
    name: Annotated[
        str | None, typer.Option("--name", help="Deployment name (default: derived from the model)")
    ] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Replicas of the model")] = 1,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Keep running in the background")] = False,
    gateway_host: Annotated[
        str, typer.Option("--gateway-host", help="Address of the OpenAI API")
    ] = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option("--gateway-port")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port")] = 50051,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the model to serve")
    ] = 900.0,
) -> None:
    """Run a control plane, one agent and a model on this machine; print the URL, an API key and the admin
    token. Ctrl-C (or `llmctl down` with --detach) stops everything."""
    from llmctl.controlplane.up import UpSpec, check_can_start, spawn_detached

    for flag, port in (("--gateway-port", gateway_port), ("--grpc-port", grpc_port)):
        if not 0 < port < 65536:
            fail(f"{flag} must be a port between 1 and 65535, got {port}")
    if gateway_port == grpc_port:
        fail("--gateway-port and --grpc-port must differ")
    if not 1 <= replicas <= 64:
        fail(f"--replicas must be between 1 and 64, got {replicas}")
    model_ref, default_name = _resolve_model(model)
    spec = UpSpec(
        model=model_ref,
        deployment=name or default_name,
        home=str(home()),
        replicas=replicas,
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        grpc_port=grpc_port,
        timeout_s=timeout,
        run_id=secrets.token_hex(8),
    )
    with reported_errors():
        from llmctl.controlplane.services import check_name

        check_name("deployment", spec.deployment)
        check_can_start(spec)
        if detach:
            state = spawn_detached(spec, _progress)
            _announce(state, detached=True)
        else:
            from llmctl.controlplane.up import Stack

            Stack(spec, _progress).run(announce=lambda state: _announce(state, detached=False))


def down() -> None:
    """Stop what `llmctl up` started here: agent and replicas first, then the control plane."""
    from llmctl.controlplane.up import down as stop_all

    folder = home()
    stopped = stop_all(folder, _progress)
    typer.echo("stopped " + ", ".join(stopped) if stopped else f"llmctl is not up in {folder}")


def _resolve_model(model: str) -> tuple[str, str]:
    """(model reference the agent resolves, default deployment name); pulls a registered model first."""
    import re

    from llmctl.agent.engine.paths import REGISTRY

    if model in REGISTRY:
        from llmctl.agent.engine.errors import EngineError
        from llmctl.agent.models import pull

        try:
            pull(model)
        except EngineError as e:
            fail(f"could not pull {model}: {e}", EXIT_SYSTEM)
        return model, model
    path = Path(model).expanduser()
    if path.exists():
        stem = path.stem if path.is_file() else path.name
        label = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].strip("-")
        return str(path.resolve()), label or "model"
    if model.startswith((".", "/", "~")):
        fail(f"--model {model}: no such file or folder")
    return model, re.sub(r"[^a-z0-9-]+", "-", model.lower().rsplit("/", 1)[-1]).strip("-")[:63] or "model"


def _progress(line: str) -> None:
    typer.secho(line, err=True, dim=True)


def _announce(state: dict, *, detached: bool) -> None:
    url, key, deployment = state["gateway_url"], state["api_key"], state["deployment"]
    typer.secho(f"llmctl is up: {deployment} serves at {url}/v1", fg="green", bold=True)
    typer.echo(f"  API key (tenant {state['tenant']}): {key}")
    typer.echo(f"  admin token:     {state['admin_token']}")
    typer.echo(f"  control plane:   {state['control_plane']}    logs: {state['logs']}")
    typer.echo(
        f"  try: curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' \\"
    )
    typer.echo(
        f'         -d \'{{"model": "{deployment}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
    typer.echo("  stop: llmctl down" if detached else "  stop: Ctrl-C")
