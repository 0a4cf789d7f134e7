"""`llmctl server | agent | up | down`: the long-running processes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from llmctl.controlplane.commands.common import (
    EXIT_SYSTEM,
    CaOpt,
    CertOpt,
    KeyOpt,
    Output,
    OutputOpt,
    fail,
    home,
    print_json,
    print_table,
    reported_errors,
)


def register(app: typer.Typer) -> None:
    app.command("server")(server)
    app.command("agent")(agent)
    app.command("up")(up)
    app.command("down")(down)
    app.command("ps")(ps)


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
    api_key_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-secret-file",
            envvar="LLMCTL_API_KEY_SECRET_FILE",
            show_default=False,
            help="File holding the HMAC key API keys are hashed with; every control plane on one database "
            "needs the same (default: read, or create, $LLMCTL_HOME/api_key_secret)",
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
    response_cache_mb: Annotated[
        float,
        typer.Option("--response-cache-mb",
                     help="MiB for the gateway's exact response cache of deterministic requests (0: off; "
                     "docs/caching.md)"),
    ] = 0.0,
    response_cache_ttl: Annotated[
        float, typer.Option("--response-cache-ttl", help="Seconds a cached answer may be served")
    ] = 3600.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", show_default=False,
                     help="Serve gRPC and the gateway over TLS with this certificate (PEM; `llmctl certs server`)"),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", show_default=False, help="Its private key")] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option("--client-ca", show_default=False,
                     help="Require gRPC callers (agents, llmctl) to present a certificate this CA signed"),
    ] = None,
) -> None:
    """Run the control plane: gRPC for agents and llmctl, the OpenAI-compatible gateway, the reconciler."""
    for flag, port in (("--grpc-port", grpc_port), ("--gateway-port", gateway_port)):
        if not 0 <= port < 65536:
            fail(f"{flag} must be a port between 0 and 65535, got {port}")
    for flag, seconds in (("--node-timeout", node_timeout), ("--rollout-timeout", rollout_timeout),
                          ("--quality-retention", quality_retention), ("--traffic-retention", traffic_retention),
                          ("--response-cache-ttl", response_cache_ttl)):
        if not seconds > 0:
            fail(f"{flag} must be a number of seconds > 0, got {seconds}")
    if price_table is not None and not price_table.is_file():
        fail(f"--price-table {price_table} is not a file")
    if not response_cache_mb >= 0:
        fail(f"--response-cache-mb must be a number of MiB >= 0 (0: off), got {response_cache_mb}")
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together: pass both, or neither for plaintext")
    if client_ca is not None and tls_cert is None:
        fail("--client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
    from llmctl.controlplane.server import ServerConfig, run_server
    from llmctl.controlplane.tls import ServerTls

    with reported_errors():
        tls = ServerTls(tls_cert, tls_key, client_ca) if tls_cert is not None and tls_key is not None else None
        config = ServerConfig(
            database_url=database_url,
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            gateway_host=gateway_host,
            gateway_port=gateway_port,
            admin_token=admin_token,
            join_token=join_token,
            api_key_secret=_read_secret(api_key_secret_file) if api_key_secret_file else None,
            node_timeout_s=node_timeout,
            rollout_timeout_s=rollout_timeout,
            price_table=str(price_table) if price_table else None,
            quality_retention_s=quality_retention,
            traffic_retention_s=traffic_retention,
            response_cache_mb=response_cache_mb,
            response_cache_ttl_s=response_cache_ttl,
            tls=tls,
        )
        try:
            run_server(config)
        except (OSError, RuntimeError) as e:  # e.g. a port already in use
            fail(f"the control plane could not start: {e}", EXIT_SYSTEM)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        fail(f"--api-key-secret-file {path}: {e.strerror}")


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
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run this host's agent: join the control plane, report telemetry, run the replicas it is given."""
    from llmctl.agent.daemon import AgentConfig, AgentConfigError, run_agent
    from llmctl.controlplane.errors import InvalidArgument
    from llmctl.controlplane.tls import ClientTls

    try:
        tls = ClientTls(ca=ca, cert=cert, key=key) if ca or cert or key else None
        config = AgentConfig(
            control_plane=control_plane,
            join_token=join_token,
            node_name=node_name,
            max_replicas=max_replicas,
            replica_host=replica_host,
            log_dir=log_dir,
            tls=tls,
        )
    except AgentConfigError as e:
        fail(str(e))
    except InvalidArgument as e:
        fail(e.message)
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
    tls: Annotated[
        bool | None,
        typer.Option("--tls/--no-tls", show_default=False,
                     help="Mutual TLS on gRPC and HTTPS on the gateway, from a local CA in $LLMCTL_HOME/tls "
                     "(default: on when --gateway-host is not a loopback address)"),
    ] = None,
    response_cache_mb: Annotated[
        float,
        typer.Option("--response-cache-mb",
                     help="MiB for the gateway's exact response cache of deterministic requests (0: off)"),
    ] = 0.0,
) -> None:
    """Run a control plane, one agent and a model on this machine; print the URL, an API key and the admin
    token. Ctrl-C (or `llmctl down` with --detach) stops everything."""
    from llmctl.controlplane.tls import is_loopback
    from llmctl.controlplane.up import UpSpec, check_can_start, spawn_detached

    for flag, port in (("--gateway-port", gateway_port), ("--grpc-port", grpc_port)):
        if not 0 < port < 65536:
            fail(f"{flag} must be a port between 1 and 65535, got {port}")
    if gateway_port == grpc_port:
        fail("--gateway-port and --grpc-port must differ")
    if not 1 <= replicas <= 64:
        fail(f"--replicas must be between 1 and 64, got {replicas}")
    if not response_cache_mb >= 0:
        fail(f"--response-cache-mb must be a number of MiB >= 0 (0: off), got {response_cache_mb}")
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
        tls=tls if tls is not None else not is_loopback(gateway_host),
        run_id=secrets.token_hex(8),
        response_cache_mb=response_cache_mb,
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


def ps(output: OutputOpt = Output.table) -> None:
    """What `llmctl up` runs here: each process, whether it runs, and how often it was restarted."""
    from llmctl.controlplane.commands.render import ago
    from llmctl.controlplane.commands.up_state import live_pids, read_state

    folder = home()
    state = read_state(folder)
    running = live_pids(state)
    restarts = state.get("restarts") or {}
    found = []
    for name in ("supervisor", "server", "agent"):
        record = restarts.get(name) or {}
        if name in running:
            process_state = "running"
        elif record.get("waiting") and "supervisor" in running:
            process_state = "restarting"
        else:
            process_state = "stopped"
        found.append({
            "name": name,
            "pid": running.get(name),
            "state": process_state,
            "restarts": record.get("count", 0),
            "last_exit": record.get("last_exit"),
            "last_exit_at": record.get("last_exit_at"),
        })
    if output == Output.json:
        print_json({"state": state.get("state"), "home": str(folder), "processes": found})
        return
    if not state:
        typer.echo(f"llmctl was never up in {folder}")
        return
    print_table(
        f"llmctl up in {folder}: {state.get('state')}",
        ["PROCESS", "PID", "STATE", "RESTARTS", "LAST EXIT"],
        [
            [p["name"], p["pid"], p["state"], p["restarts"],
             p["last_exit"] and f"{p['last_exit']}, {ago(p['last_exit_at'])}"]
            for p in found
        ],
    )


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
    tls = state.get("tls") or {}
    if tls:
        typer.echo(f"  TLS CA:          {tls['ca']}    (llmctl finds it through up.json)")
    cacert = f"--cacert {tls['ca']} " if tls else ""
    typer.echo(
        f"  try: curl {cacert}{url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' \\"
    )
    typer.echo(
        f'         -d \'{{"model": "{deployment}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
    typer.echo("  stop: llmctl down" if detached else "  stop: Ctrl-C")
