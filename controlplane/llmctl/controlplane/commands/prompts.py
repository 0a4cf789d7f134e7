"""`llmctl prompts audit DEPLOYMENT [--window 24h]`: where a deployment's prompt tokens go (by tenant, by system
prompt, by shared prefix; hashes, never text) and what a shorter system prompt and a prefix cache save per
million requests (services/prompts.py has the arithmetic)."""

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
    print_table,
)
from llmctl.controlplane.commands.traffic import parse_window

HASH_SHOWN = 8
"""Hex digits of a hash shown in the table (JSON has all 16)."""

prompts_app = typer.Typer(help="Prompt tokens: who sends them, what repeats, what could be saved.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(prompts_app, name="prompts")


@prompts_app.command("audit")
def audit(
    deployment: Annotated[str, typer.Argument(help="Deployment name")],
    window: Annotated[str, typer.Option("--window", "-w", help="How far back: 90s, 60m, 2h, 1d")] = "24h",
    top: Annotated[int, typer.Option("--top", help="System prompts and prefixes listed (1-100)")] = 5,
    target_system_tokens: Annotated[int | None, typer.Option(
        "--target-system-tokens", show_default=False,
        help="The shorter system prompt to price, in tokens (default: half the mean one)")] = None,
    usd_per_mtok: Annotated[float | None, typer.Option(
        "--usd-per-mtok", show_default=False,
        help="Dollars per million prompt tokens (default: the window's recorded cost per token)")] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Prompt tokens of DEPLOYMENT's recent gateway requests by tenant, the most used system prompts and the most
    repeated prefixes (by hash: the gateway keeps no prompt text), and the prompt tokens and dollars a shorter
    system prompt and a prefix cache save per million requests."""
    window_s = parse_window("--window", window)
    if not 1 <= top <= 100:
        fail(f"--top takes 1 to 100, got {top}")
    if target_system_tokens is not None and target_system_tokens < 0:
        fail(f"--target-system-tokens takes a number of tokens >= 0, got {target_system_tokens}")
    if usd_per_mtok is not None and not 0 <= usd_per_mtok < float("inf"):
        fail(f"--usd-per-mtok takes a price in dollars >= 0, got {usd_per_mtok}")
    with admin_client(control_plane, admin_token) as client:
        found = audit_dict(client.get_prompt_audit(deployment, window_s=window_s, top=top,
                                                   target_system_tokens=target_system_tokens,
                                                   usd_per_mtok=usd_per_mtok))
    if output == Output.json:
        print_json(found)
        return
    print_audit(found, window)


def audit_dict(audit: Any) -> dict[str, Any]:
    """A PromptAudit for `--output json` (stable keys; null where there is no price)."""
    def saving(value: Any) -> dict[str, float | None]:
        return {"tokens_per_million": value.tokens_per_million,
                "usd_per_million": value.usd_per_million if value.HasField("usd_per_million") else None}

    return {
        "deployment": audit.deployment, "since": audit.since, "until": audit.until, "requests": audit.requests,
        "prompt_tokens": audit.prompt_tokens,
        "tenants": [{"tenant": t.tenant, "requests": t.requests, "prompt_tokens": t.prompt_tokens,
                     "prompt_share": t.prompt_share, "completion_tokens": t.completion_tokens,
                     "cost_usd": t.cost_usd} for t in audit.tenants],
        "system_prompts": [{"hash": p.hash, "requests": p.requests, "share": p.share, "tokens": p.tokens}
                           for p in audit.system_prompts],
        "distinct_system_prompts": audit.distinct_system_prompts,
        "system_prompt_requests": audit.system_prompt_requests, "mean_system_tokens": audit.mean_system_tokens,
        "target_system_tokens": audit.target_system_tokens,
        "shorter_system_prompt": saving(audit.shorter_system_prompt),
        "prefixes": [{"hash": p.hash, "tokens": p.tokens, "requests": p.requests, "share": p.share,
                      "saved_tokens": p.saved_tokens} for p in audit.prefixes],
        "distinct_prefixes": audit.distinct_prefixes, "prefix_saved_tokens": audit.prefix_saved_tokens,
        "prefix_saved_fraction": audit.prefix_saved_fraction, "prefix_cache": saving(audit.prefix_cache),
        "usd_per_mtok": audit.usd_per_mtok if audit.HasField("usd_per_mtok") else None,
        "price_source": audit.price_source or None,
    }


def print_audit(found: dict[str, Any], window: str) -> None:
    count = found["requests"]
    typer.echo(f"{found['deployment']}: {count} request{'s' if count != 1 else ''} in the last {window.strip()}, "
               f"{found['prompt_tokens']:,} prompt tokens")
    typer.echo()
    print_table("prompt tokens by tenant", ["TENANT", "REQUESTS", "PROMPT TOKENS", "SHARE", "OUTPUT TOKENS", "COST"], [
        [t["tenant"], t["requests"], f"{t['prompt_tokens']:,}", f"{t['prompt_share']:.0%}",
         f"{t['completion_tokens']:,}", dollars(t["cost_usd"])] for t in found["tenants"]])
    typer.echo()
    used = found["system_prompts"]
    typer.echo(f"system prompts: {found['distinct_system_prompts']} distinct, in {found['system_prompt_requests']} "
               f"of {count} requests")
    if used:
        print_table(None, ["HASH", "TOKENS", "REQUESTS", "SHARE"], [
            [p["hash"][:HASH_SHOWN], f"{p['tokens']:.0f}", p["requests"], f"{p['share']:.0%}"] for p in used])
        first = used[0]
        typer.echo(f"system prompt {first['hash'][:HASH_SHOWN]} ({first['tokens']:.0f} tokens) is in "
                   f"{first['share']:.0%} of requests")
    typer.echo()
    typer.echo(f"most repeated prefixes: {found['distinct_prefixes']} distinct")
    if found["prefixes"]:
        print_table(None, ["HASH", "TOKENS", "REUSED BY", "SHARE", "SAVED TOKENS"], [
            [p["hash"][:HASH_SHOWN], f"{p['tokens']:.0f}", p["requests"], f"{p['share']:.0%}",
             f"{p['saved_tokens']:,}"] for p in found["prefixes"]])
    typer.echo()
    typer.echo("per million requests:")
    typer.echo(f"  prefix caching saves {saved(found['prefix_cache'])} ({found['prefix_saved_fraction']:.0%} of "
               "prompt tokens)")
    if found["system_prompt_requests"]:
        typer.echo(f"  system prompts cut to {found['target_system_tokens']} tokens save "
                   f"{saved(found['shorter_system_prompt'])} (the mean is {found['mean_system_tokens']:.0f} tokens a "
                   "request)")
    price = found["usd_per_mtok"]
    if price is None:
        typer.echo("no price: the window's usage rows cost nothing; give --usd-per-mtok")
    elif found["price_source"] == "recorded":
        typer.echo(f"at ${price:.4g} per million tokens, the window's recorded cost per token (prompt tokens cost "
                   "less GPU time than output tokens: an upper bound)")
    else:
        typer.echo(f"at ${price:.4g} per million prompt tokens (--usd-per-mtok)")


def saved(value: dict[str, float | None]) -> str:
    tokens = f"{value['tokens_per_million'] / 1e6:,.1f}M prompt tokens"
    return tokens if value["usd_per_million"] is None else f"{tokens}, {dollars(value['usd_per_million'])}"


def dollars(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4g}"
