"""`llmctl tokens rotate` and `llmctl audit`: replacing the shared tokens without downtime, and who did what."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from enum import StrEnum
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
from llmctl.controlplane.commands.render import when

tokens_app = typer.Typer(help="The control plane's admin and join tokens.", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenKind(StrEnum):
    admin = "admin"
    join = "join"


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
    app.command("audit")(audit)


def parse_duration(flag: str, text: str) -> float:
    """"90s", "30m", "1h", "2d" or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        fail(f"{flag} must be a duration like 90s, 30m, 1h or 2d, got {text!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


@tokens_app.command("rotate")
def rotate(
    kind: Annotated[TokenKind, typer.Argument(help="admin (llmctl, the dashboard) or join (agents)")],
    grace: Annotated[
        str, typer.Option("--grace", help="How long the previous token keeps working (90s, 30m, 1h, 2d)")
    ] = "1h",
    finish: Annotated[
        bool, typer.Option("--finish", help="Make no new token: the previous one stops working now")
    ] = False,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Make a new token while the previous one keeps working for --grace, so callers switch without downtime.

    Agents already connected stay connected; agents and operators should switch to the new token before the
    grace period ends (or --finish ends it). The new token is printed once and kept in $LLMCTL_HOME there.
    """
    grace_s = parse_duration("--grace", grace)
    with admin_client(control_plane, admin_token) as client:
        reply = client.rotate_token(kind.value, grace_s=None if finish else grace_s, finish=finish)
    found: dict[str, Any] = {"kind": kind.value, "token": reply.token or None,
                             "previous_valid_until": reply.previous_valid_until or None,
                             "token_file": reply.token_file or None}
    if output == Output.json:
        print_json(found)
        return
    if finish:
        typer.echo(f"the previous {kind.value} token no longer works")
        return
    typer.echo(f"new {kind.value} token (shown once; also in {reply.token_file} on the control plane's host): "
               f"{reply.token}")
    until = when(reply.previous_valid_until)
    typer.echo(f"the previous {kind.value} token works until {until}" if until
               else f"the previous {kind.value} token no longer works")


def audit(
    since: Annotated[
        str | None, typer.Option("--since", help="Only calls since: 1h / 2d ago, or a YYYY-MM-DD or ISO time (UTC)")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first (1-1000)")] = 100,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Every admin call that changed something or tried to: when, who (token fingerprint, address), what, result."""
    if not 1 <= limit <= 1000:
        fail(f"--limit must be between 1 and 1000, got {limit}")
    start = _parse_since(since) if since else None
    with admin_client(control_plane, admin_token) as client:
        found = [audit_dict(e) for e in client.list_audit(since=start, limit=limit)]
    if output == Output.json:
        print_json(found)
        return
    if not found:
        typer.echo("no audited calls" + (f" since {when(start)}" if start else ""))
        return
    print_table(None, ["ID", "AT", "ACTOR", "PEER", "CALL", "TARGET", "RESULT"],
                [[e["id"], when(e["at"]), e["actor"], e["peer"], e["rpc"], e["target"],
                  e["result"] if e["result"] == "ok" else f"{e['result']}: {e['message']}"] for e in found])


def audit_dict(entry: Any) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at, "actor": entry.actor, "peer": entry.peer, "rpc": entry.rpc,
            "target": entry.target, "result": entry.result, "message": entry.message}


def _parse_since(text: str) -> float:
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*[smhd]\s*", text):
        return time.time() - parse_duration("--since", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since must be a duration ago (1h, 2d) or a date/ISO time (2024-05-01T12:00), got {text!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
