"""`llmctl tenants create | list` and `llmctl usage`: who may call the gateway, and what they used."""

from __future__ import annotations

from datetime import UTC, datetime
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
    print_table,
)
from llmctl.controlplane.commands.render import limit, tenant_dict, usage_dict, when

QualityOptOut = Annotated[
    bool,
    typer.Option("--quality-opt-out/--quality-opt-in",
                 help="Never store this tenant's requests and answers as quality samples"),
]

tenants_app = typer.Typer(
    help="Tenants of the gateway: API keys, rate limits, token budgets.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(tenants_app, name="tenants")
    app.command("usage")(usage)


@tenants_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Tenant name")],
    rpm: Annotated[int, typer.Option("--rpm", help="Requests per minute; 0 = unlimited")] = 0,
    tpm: Annotated[int, typer.Option("--tpm", help="Tokens per minute; 0 = unlimited")] = 0,
    monthly_tokens: Annotated[
        int, typer.Option("--monthly-tokens", help="Token budget per calendar month; 0 = unlimited")
    ] = 0,
    quality_opt_out: QualityOptOut = False,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Create a tenant and print its API key. The key is shown this once: store it now."""
    for flag, value in (("--rpm", rpm), ("--tpm", tpm), ("--monthly-tokens", monthly_tokens)):
        if value < 0:
            fail(f"{flag} must be >= 0 (0 = unlimited), got {value}")
    with admin_client(control_plane, admin_token) as client:
        tenant, api_key = client.create_tenant(name, rpm=rpm, tpm=tpm, monthly_tokens=monthly_tokens,
                                               quality_opt_out=quality_opt_out)
    if output == Output.json:
        print_json({"tenant": tenant_dict(tenant), "api_key": api_key})
        return
    typer.echo(
        f"created tenant {tenant.name} (rpm {limit(tenant.rpm)}, tpm {limit(tenant.tpm)}, "
        f"monthly tokens {limit(tenant.monthly_tokens)})"
    )
    typer.echo(f"API key (shown once, store it now): {api_key}")


@tenants_app.command("update")
def update(
    name: Annotated[str, typer.Argument(help="Tenant name")],
    quality_opt_out: Annotated[
        bool | None,
        typer.Option("--quality-opt-out/--quality-opt-in",
                     help="Stop (and delete) or allow storing this tenant's requests as quality samples"),
    ] = None,
    cache_sampled: Annotated[
        bool | None,
        typer.Option("--cache-sampled/--no-cache-sampled",
                     help="Let the gateway's exact response cache answer this tenant's sampled requests too "
                     "(by default only deterministic ones: temperature 0, top_k 1 or a seed)"),
    ] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Change a tenant's settings; opting out of quality sampling deletes its stored samples."""
    if quality_opt_out is None and cache_sampled is None:
        fail("nothing to change: give --quality-opt-out/--quality-opt-in or --cache-sampled/--no-cache-sampled")
    with admin_client(control_plane, admin_token) as client:
        tenant = client.update_tenant(name, quality_opt_out=quality_opt_out, cache_sampled=cache_sampled)
    if output == Output.json:
        print_json(tenant_dict(tenant))
        return
    typer.echo(f"tenant {tenant.name}: " + ("opted out of" if tenant.quality_opt_out else "opted in to")
               + " quality sampling; the response cache answers "
               + ("every cacheable request" if tenant.cache_sampled else "deterministic requests only"))


@tenants_app.command("list")
def list_(
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Tenants and their limits (keys are never shown again)."""
    with admin_client(control_plane, admin_token) as client:
        found = [tenant_dict(t) for t in client.list_tenants()]
    if output == Output.json:
        print_json(found)
        return
    if not found:
        typer.echo("no tenants yet; create one with `llmctl tenants create NAME`")
        return
    print_table(
        None,
        ["TENANT", "RPM", "TPM", "MONTHLY TOKENS", "QUALITY SAMPLING", "CREATED"],
        [
            [t["name"], limit(t["rpm"]), limit(t["tpm"]), limit(t["monthly_tokens"]),
             "opted out" if t["quality_opt_out"] else "yes", when(t["created_at"])]
            for t in found
        ],
    )


def usage(
    tenant: Annotated[str, typer.Argument(help="Tenant name")],
    since: Annotated[
        str | None, typer.Option("--since", help="YYYY-MM-DD or ISO time, UTC (default: start of this month)")
    ] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """A tenant's requests, tokens and cost per deployment."""
    start = _parse_since(since) if since else None
    with admin_client(control_plane, admin_token) as client:
        rows = [usage_dict(r) for r in client.get_usage(tenant, since=start)]
    if output == Output.json:
        print_json({"tenant": tenant, "since": start, "rows": rows})
        return
    period = f"since {when(start)}" if start else "this month"
    if not rows:
        typer.echo(f"{tenant}: no usage {period}")
        return
    total = {
        k: sum(r[k] for r in rows) for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd")
    }
    print_table(
        f"{tenant}: usage {period}",
        ["DEPLOYMENT", "REQUESTS", "PROMPT", "COMPLETION", "COST USD"],
        [
            *(
                [
                    r["deployment"],
                    r["requests"],
                    r["prompt_tokens"],
                    r["completion_tokens"],
                    f"{r['cost_usd']:.6f}",
                ]
                for r in rows
            ),
            [
                "total",
                total["requests"],
                total["prompt_tokens"],
                total["completion_tokens"],
                f"{total['cost_usd']:.6f}",
            ],
        ],
    )


def _parse_since(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since must be a date (2024-05-01) or ISO time (2024-05-01T12:00), got {text!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
