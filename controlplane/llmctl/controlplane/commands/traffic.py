"""`llmctl traffic DEPLOYMENT [--window 60m]`: the shape of a deployment's recent gateway traffic (no content)
and the synthetic bench workload `llmctl optimize --from-traffic` would measure with."""

from __future__ import annotations

import json
import re
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

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
STATS = (("prompt_tokens", "prompt tokens"), ("completion_tokens", "output tokens"),
         ("shared_prefix_tokens", "shared prefix tokens"), ("interarrival_s", "seconds between arrivals"))


def register(app: typer.Typer) -> None:
    app.command("traffic")(traffic)


def parse_window(flag: str, text: str, *, bare: str = "m", allow_zero: bool = False) -> float:
    """'60m', '90s', '2h', '1d' -> seconds; a bare number is in `bare` units (minutes unless said)."""
    match = _DURATION.fullmatch(text.strip())
    seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower() or bare] if match else -1.0
    if not (seconds > 0 or allow_zero and seconds == 0):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[bare]
        fail(f"{flag} takes a duration like 90s, 60m, 2h or 1d (a bare number is {unit}), got {text!r}")
    return seconds


def traffic(
    deployment: Annotated[str, typer.Argument(help="Deployment name")],
    window: Annotated[str, typer.Option("--window", "-w", help="How far back: 90s, 60m, 2h, 1d")] = "60m",
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """The shape of DEPLOYMENT's recent gateway requests: token counts, shared prefixes, arrivals (never
    their content), and the synthetic workload `llmctl optimize --from-traffic` makes of them."""
    window_s = parse_window("--window", window)
    with admin_client(control_plane, admin_token) as client:
        found = traffic_dict(client.get_traffic(deployment, window_s=window_s))
    if output == Output.json:
        print_json(found)
        return
    print_traffic(found, window)


def traffic_dict(summary: Any) -> dict[str, Any]:
    """A TrafficSummary for `--output json` (stable keys; null where there is nothing to say)."""
    def optional(field: str) -> Any:
        return getattr(summary, field) if summary.HasField(field) else None

    def stats(field: str) -> dict[str, float] | None:
        value = optional(field)
        return None if value is None else {"mean": value.mean, "p50": value.p50, "p95": value.p95, "max": value.max}

    return {
        "deployment": summary.deployment, "since": summary.since, "until": summary.until,
        "requests": summary.requests, "first_at": summary.first_at or None, "last_at": summary.last_at or None,
        "request_rate": optional("request_rate"), "shared_fraction": optional("shared_fraction"),
        **{field: stats(field) for field, _ in STATS},
        "workload": json.loads(summary.workload_json) if summary.workload_json else None,
        "workload_error": summary.workload_error or None, "workload_speedup": optional("workload_speedup"),
    }


def print_traffic(found: dict[str, Any], window: str) -> None:
    name, count = found["deployment"], found["requests"]
    head = f"{name}: {count} request{'s' if count != 1 else ''} in the last {window.strip()}"
    if found["first_at"]:
        head += f" ({when(found['first_at'])} .. {when(found['last_at'])})"
    rate = found["request_rate"]
    typer.echo(head + (f", {rate:.3g} req/s while it came" if rate else ""))
    if not count:
        typer.echo("no recorded traffic in this window: the gateway records every answered request")
        return
    print_table(None, ["", "MEAN", "P50", "P95", "MAX"], [
        [label, *(_number(stats[k]) for k in ("mean", "p50", "p95", "max"))]
        for field, label in STATS if (stats := found[field]) is not None])
    if found["shared_fraction"] is not None:
        typer.echo(f"shared prefixes: {found['shared_fraction']:.0%} of prompt tokens repeat the start of an "
                   "earlier prompt")
    workload = found["workload"]
    if workload is None:
        typer.echo(f"no synthetic workload: {found['workload_error']}")
        return
    typer.echo(f"synthetic workload (llmctl optimize {name} --from-traffic): {workload_line(workload)}")
    if found["workload_speedup"]:
        typer.echo(f"  arrivals sped up x{found['workload_speedup']:.3g} so that one measurement stays short")


def workload_line(workload: dict[str, Any]) -> str:
    inputs, outputs, rate = workload["input_len"], workload["output_len"], workload["request_rate"]
    arrivals = "all at once" if rate == "inf" else f"{rate:.3g} req/s"
    return (f"{workload['requests']} requests, prompts of {workload['shared_prefix_len']} shared + "
            f"{inputs[0]}-{inputs[1]} tokens, outputs of {outputs[0]}-{outputs[1]} tokens, {arrivals}, "
            f"seed {workload['seed']}")


def _number(value: float) -> str:
    if value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
