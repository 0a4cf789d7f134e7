"""`llmctl autoscale DEPLOYMENT [--min N --max M ...] [--advisory|--off|--on]` sets (or, without flags, shows)
a deployment's autoscaling policy; `llmctl autoscale history DEPLOYMENT` lists its decisions; `llmctl
autoscale simulate [--trace diurnal|FILE ...]` replays a day of traffic through the same policy code, against
fixed provisioning at peak, without a control plane.

Flags left out keep the stored policy's values (the defaults for a first policy). While the mode is on the
autoscaler is the deployment's only writer of the replica count: `llmctl scale` is refused until the mode is
advisory (decisions recorded, not applied) or off."""

from __future__ import annotations

from pathlib import Path
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
from llmctl.controlplane.commands.render import autoscale_policy_dict, autoscale_policy_text, when
from llmctl.controlplane.commands.traffic import parse_window

# `simulate`'s replica: SmolLM2-135M as measured on the project's 2-core box (docs/autoscaling.md,
# bench_scale_out.py): one replica serves 8 concurrent chat requests x 150 tokens at 398.7 output tok/s, so
# each request holds its slot 150 / (398.7 / 8) = 3.0 s.
SIM_CONCURRENCY = 8
SIM_SERVICE = "3s"
SIM_COLD_START = "120s"
SIM_MAX_REPLICAS = 8
SIM_PEAK_RPS = 8.0


def _sim_opt(flag: str, text: str, kind: Any = str) -> Any:
    return Annotated[kind | None, typer.Option(flag, help=f"With `simulate`: {text}", show_default=False)]


TraceOpt = _sim_opt("--trace", "`diurnal` (a synthetic day, the default) or a recorded FILE: a JSON list of "
                    "arrival times in seconds, or CSV with one per line")
ColdStartOpt = _sim_opt("--cold-start", "how long a replica takes from being asked for to READY (default 120s: "
                        "GPU cold starts take minutes; measure yours, from `llmctl scale` to READY)")
ConcurrencyOpt = _sim_opt("--replica-concurrency", "requests one replica serves at once (default 8: SmolLM2 "
                          "as measured in docs/autoscaling.md)", int)
ServiceTimeOpt = _sim_opt("--service-time", "how long each request holds its slot (default 3s: SmolLM2 served "
                          "8 concurrent x 150 tokens at 398.7 tok/s on the 2-core box, docs/autoscaling.md)")
SloOpt = _sim_opt("--slo-queue-wait", "the longest acceptable queue wait (default 2s)")
PeakOpt = _sim_opt("--peak-rps", f"the diurnal curve's daytime peak, req/s (default {SIM_PEAK_RPS:g}); bursts "
                   "reach 1.5-2.5x the curve", float)
SeedOpt = _sim_opt("--seed", "which random diurnal day (default 0)", int)
PngOpt = _sim_opt("--png", "save the day's arrivals and replicas as a PNG (1000 x 500)", Path)
JsonOpt = _sim_opt("--json", "write the results as JSON", Path)
DEFAULTS = {"min_replicas": 1, "max_replicas": 4, "target_queue": 4.0, "target_kv_usage": 0.6,
            "scale_up_window_s": 30.0, "scale_down_window_s": 600.0, "max_step": 2, "mode": "on"}


def register(app: typer.Typer) -> None:
    app.command("autoscale")(autoscale)


def autoscale(
    deployment: Annotated[str, typer.Argument(help="Deployment name, `history` and one, or `simulate`")],
    history_of: Annotated[str | None, typer.Argument(help="With `history`: the deployment", show_default=False)] = None,
    min_replicas: Annotated[int | None, typer.Option("--min", help="Fewest replicas (0 opts in to scale to zero)")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max", help="Most replicas")] = None,
    target_queue: Annotated[
        float | None, typer.Option("--target-queue", help="Waiting requests per replica to run at")] = None,
    target_kv_usage: Annotated[
        str | None, typer.Option("--target-kv-usage", help="KV-cache usage per replica, 0..1, or `off`")] = None,
    scale_up_window: Annotated[
        str | None, typer.Option("--scale-up-window", help="How long a rise must last before scaling up: 30s")] = None,
    scale_down_window: Annotated[
        str | None, typer.Option("--scale-down-window", help="How long the quiet must last: 10m")] = None,
    max_step: Annotated[int | None, typer.Option("--max-step", help="Most replicas added or removed at once")] = None,
    advisory: Annotated[bool, typer.Option("--advisory", help="Record every decision, apply none")] = False,
    off: Annotated[bool, typer.Option("--off", help="Keep the policy, stop evaluating it")] = False,
    on: Annotated[bool, typer.Option("--on", help="Apply decisions (the default for a new policy)")] = False,
    limit: Annotated[int, typer.Option("--limit", help="With `history`: how many decisions")] = 20,
    trace: TraceOpt = None,
    cold_start: ColdStartOpt = None,
    replica_concurrency: ConcurrencyOpt = None,
    service_time: ServiceTimeOpt = None,
    slo_queue_wait: SloOpt = None,
    peak_rps: PeakOpt = None,
    seed: SeedOpt = None,
    png: PngOpt = None,
    json_path: JsonOpt = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Autoscale DEPLOYMENT on queue depth and KV usage: up fast, down slowly, never past --min/--max.

    `llmctl autoscale simulate` replays a day through the policy (--min 1, --max 8 unless given) instead."""
    sim = {"--trace": trace, "--cold-start": cold_start, "--replica-concurrency": replica_concurrency,
           "--service-time": service_time, "--slo-queue-wait": slo_queue_wait, "--peak-rps": peak_rps,
           "--seed": seed, "--png": png, "--json": json_path}
    if deployment == "simulate" and history_of is None:
        if advisory or off or on:
            fail("--on, --advisory and --off set a deployment's mode; `simulate` always applies the policy")
        policy = _sim_policy(min_replicas, max_replicas, target_queue, target_kv_usage, scale_up_window,
                             scale_down_window, max_step)
        from llmctl.controlplane.commands.autoscale_simulate import simulate_command

        simulate_command(policy, trace or "diurnal", cold_start or SIM_COLD_START,
                         SIM_CONCURRENCY if replica_concurrency is None else replica_concurrency,
                         service_time or SIM_SERVICE, slo_queue_wait or "2s",
                         SIM_PEAK_RPS if peak_rps is None else peak_rps, seed or 0, png, json_path, output)
        return
    given = [flag for flag, value in sim.items() if value is not None]
    if given:
        verb = "goes" if len(given) == 1 else "go"
        fail(f"{', '.join(given)} {verb} only with `llmctl autoscale simulate`")
    if history_of is not None:
        if deployment == "simulate":
            fail(f"`llmctl autoscale simulate` takes no deployment, got {history_of!r}")
        if deployment != "history":
            fail(f"unexpected argument {history_of!r}: did you mean `llmctl autoscale history {history_of}`?")
        with admin_client(control_plane, admin_token) as client:
            found = autoscaling_dict(client.get_autoscaling(history_of, limit=limit))
        if output == Output.json:
            print_json(found)
        else:
            print_history(found)
        return
    if sum((advisory, off, on)) > 1:
        fail("choose one of --on, --advisory and --off")
    changes = _policy_flags(min_replicas, max_replicas, target_queue, target_kv_usage, scale_up_window,
                            scale_down_window, max_step)
    if advisory or off or on:
        changes["mode"] = "advisory" if advisory else "off" if off else "on"
    with admin_client(control_plane, admin_token) as client:
        current = client.get_autoscaling(deployment, limit=0)
        if changes:
            stored = autoscale_policy_dict(current.policy) if current.HasField("policy") else DEFAULTS
            current = client.set_autoscaling(deployment, {**stored, **changes})
        found = autoscaling_dict(current)
    if output == Output.json:
        print_json(found)
        return
    policy = found["policy"]
    if policy is None:
        typer.echo(f"{deployment}: no autoscaling policy; set one with `llmctl autoscale {deployment} --min 1 --max 4`")
        return
    typer.echo(f"{deployment}: {autoscale_policy_text(policy)}")
    last = found["last"]
    if last is not None:
        typer.echo(f"  now: {last['current']} replica(s), the policy wants {last['desired']} ({last['reason']})")


def _policy_flags(min_replicas: int | None, max_replicas: int | None, target_queue: float | None,
                  target_kv_usage: str | None, scale_up_window: str | None, scale_down_window: str | None,
                  max_step: int | None) -> dict[str, Any]:
    """The policy fields the flags give, parsed (durations, `off`); flags left out are absent."""
    given: dict[str, Any] = {}
    if min_replicas is not None:
        given["min_replicas"] = min_replicas
    if max_replicas is not None:
        given["max_replicas"] = max_replicas
    if target_queue is not None:
        given["target_queue"] = target_queue
    if target_kv_usage is not None:
        given["target_kv_usage"] = None if target_kv_usage.lower() == "off" else _fraction(target_kv_usage)
    if scale_up_window is not None:
        given["scale_up_window_s"] = parse_window("--scale-up-window", scale_up_window, bare="s", allow_zero=True)
    if scale_down_window is not None:
        given["scale_down_window_s"] = parse_window("--scale-down-window", scale_down_window, bare="s",
                                                    allow_zero=True)
    if max_step is not None:
        given["max_step"] = max_step
    return given


def _sim_policy(*flags: Any):
    """The policy flags over the policy's own defaults (--min 1, --max 8 unless given), checked as the server
    checks them."""
    from llmctl.controlplane.autoscaling.policy import AutoscalePolicy, PolicyError

    try:
        return AutoscalePolicy(**{"min_replicas": 1, "max_replicas": SIM_MAX_REPLICAS, **_policy_flags(*flags)})
    except PolicyError as e:
        fail(str(e))


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        fail(f"--target-kv-usage takes a fraction in (0, 1] or `off`, got {text!r}")
        raise  # unreachable: fail exits


def autoscaling_dict(found: Any) -> dict[str, Any]:
    """An Autoscaling message for `--output json`."""
    def optional(msg: Any, field: str) -> Any:
        return getattr(msg, field) if msg.HasField(field) else None

    last = None
    if found.HasField("last"):
        e = found.last
        last = {"current": e.current, "desired": e.desired, "signal": e.signal, "load": optional(e, "load"),
                "target": optional(e, "target"), "reason": e.reason}
    return {
        "deployment": found.deployment,
        "policy": autoscale_policy_dict(found.policy) if found.HasField("policy") else None,
        "last": last,
        "decisions": [{"id": d.id, "at": d.at, "mode": d.mode, "current": d.current, "desired": d.desired,
                       "applied": d.applied, "signal": d.signal, "load": optional(d, "load"),
                       "target": optional(d, "target"), "reason": d.reason} for d in found.decisions],
    }


def print_history(found: dict[str, Any]) -> None:
    if found["policy"] is not None:
        typer.echo(f"{found['deployment']}: {autoscale_policy_text(found['policy'])}")
    if not found["decisions"]:
        typer.echo("no decisions yet")
        return
    print_table(None, ["WHEN", "MODE", "FROM", "TO", "APPLIED", "SIGNAL", "LOAD", "WHY"], [
        [when(d["at"]), d["mode"], str(d["current"]), str(d["desired"]), "yes" if d["applied"] else "no",
         d["signal"], "-" if d["load"] is None else f"{d['load']:g}", d["reason"]]
        for d in found["decisions"]
    ])
