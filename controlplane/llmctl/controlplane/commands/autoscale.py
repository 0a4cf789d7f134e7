"""`llmctl autoscale DEPLOYMENT [--min N --max M ...] [--advisory|--off|--on]` sets (or, without flags, shows)
a deployment's autoscaling policy; `llmctl autoscale history DEPLOYMENT` lists its decisions; `llmctl
autoscale simulate [--trace diurnal|FILE ...]` replays a day of traffic through the same policy code, against
fixed provisioning at peak, without a control plane.

Flags left out keep the stored policy's values (the defaults for a first policy). While the mode is on the
autoscaler is the deployment's only writer of the replica count: `llmctl scale` is refused until the mode is
advisory (decisions recorded, not applied) or off."""

from __future__ import annotations

import dataclasses
import json
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


def simulate_command(policy: Any, trace_arg: str, cold_start: str, concurrency: int, service_time: str,
                     slo: str, peak_rps: float, seed: int, png: Path | None, json_path: Path | None,
                     output: Output) -> None:
    from llmctl.controlplane.autoscaling import simulate as sim
    from llmctl.controlplane.commands.common import console

    cold_start_s = parse_window("--cold-start", cold_start, bare="s", allow_zero=True)
    service_s = parse_window("--service-time", service_time, bare="s")
    slo_s = parse_window("--slo-queue-wait", slo, bare="s", allow_zero=True)
    try:
        model = sim.ReplicaModel(cold_start_s=cold_start_s, max_concurrency=concurrency, service_s=service_s)
        config = sim.SimConfig(slo_queue_wait_s=slo_s)
        trace = sim.diurnal_trace(seed, peak_rps) if trace_arg == "diurnal" else sim.load_trace(trace_arg)
    except (sim.SimulationError, sim.TraceError) as e:
        fail(str(e))
    with console(stderr=True).status(f"replaying {trace.duration_s / 3600:.1f} h of traffic ..."):
        result = sim.compare(trace, policy, model, config)
    found = simulation_dict(result, policy, model, config)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            fail(f"cannot write {json_path}: {e}")
    if png is not None:
        save_png(result, png)
    if output == Output.json:
        print_json(found)
        return
    print_simulation(found)
    typer.echo(terminal_plot(result))


def simulation_dict(result: Any, policy: Any, model: Any, config: Any) -> dict[str, Any]:
    """A Comparison for `--json` and `--output json`: the summary, the scale events, the per-minute series."""
    def run(r: Any) -> dict[str, Any]:
        return {"initial_replicas": r.initial_replicas, "replica_hours": round(r.replica_hours, 3),
                "arrived": r.arrived, "served": r.served,
                "queued_at_end": r.queued_at_end, "in_flight_at_end": r.in_flight_at_end,
                "wait_p50_s": r.wait_p50_s, "wait_p99_s": r.wait_p99_s, "slo_misses": round(r.slo_misses, 6),
                "max_replicas": r.max_replicas, "scale_events": r.scale_events,
                "events": [{"at_s": e.at_s, "from": e.current, "to": e.desired, "reason": e.reason}
                           for e in r.events]}

    a, f = result.autoscaled, result.fixed
    return {
        "trace": result.trace,
        "policy": {**dataclasses.asdict(policy), "mode": policy.mode.value},
        "replica_model": {"cold_start_s": model.cold_start_s, "max_concurrency": model.max_concurrency,
                          "service_s": model.service_s, "throughput_rps": round(model.throughput_rps, 4)},
        "step_s": config.step_s, "evaluate_every_s": config.evaluate_every_s,
        "slo_queue_wait_s": config.slo_queue_wait_s,
        "peak_minute_rps": round(result.peak_rate_rps, 3), "fixed_replicas": result.fixed_replicas,
        "saving": round(result.saving, 4),
        "autoscaled": run(a), "fixed": run(f),
        "minutes": {"arrival_rps": _rounded(a.minutes["arrival_rps"]), "ready": _rounded(a.minutes["ready"]),
                    "asked": _rounded(a.minutes["asked"])},
    }


def _rounded(series: Any) -> list[float]:
    return [round(float(x), 3) for x in series]


def print_simulation(found: dict[str, Any]) -> None:
    m, a = found["replica_model"], found["autoscaled"]
    slo = found["slo_queue_wait_s"]
    policy = autoscale_policy_text(found["policy"]).split(": ", 1)[1]
    typer.echo(f"trace: {found['trace']}, {a['arrived']:,} requests, busiest minute "
               f"{found['peak_minute_rps']:.2f} req/s")
    typer.echo(f"replica: READY {m['cold_start_s']:g}s after it is asked for, {m['max_concurrency']} requests "
               f"at once x {m['service_s']:g}s = {m['throughput_rps']:.2f} req/s")
    typer.echo(f"policy: {policy}")
    typer.echo(f"fixed at peak: {found['fixed_replicas']} replicas = ceil({found['peak_minute_rps']:.2f} req/s "
               f"in the busiest minute / {m['throughput_rps']:.2f} req/s per replica)")

    def row(name: str, r: dict[str, Any], saving: str) -> list[str]:
        return [name, f"{r['replica_hours']:.1f}", saving, f"{r['wait_p50_s']:g}s", f"{r['wait_p99_s']:g}s",
                f"{r['slo_misses']:.2%}", str(r["max_replicas"]), str(r["scale_events"])]

    print_table(None, ["PROVISIONING", "REPLICA-HOURS", "SAVING", "P50 WAIT", "P99 WAIT",
                       f"WAIT > {slo:g}s", "MAX REPLICAS", "SCALE EVENTS"], [
        row("autoscaled", a, f"{found['saving']:.1%}"),
        row(f"fixed at peak ({found['fixed_replicas']})", found["fixed"], "-"),
    ])
    unfinished = a["queued_at_end"] + a["in_flight_at_end"]
    typer.echo(f"autoscaled: {a['served']:,} served + {unfinished} queued or in flight at the end = "
               f"{a['arrived']:,} arrived (none lost)")


def terminal_plot(result: Any, width: int = 100, height: int = 20) -> str:
    """Arrivals (req/s, left) and replicas (right) per 10 minutes, autoscaled against fixed."""
    import sys

    import plotext as plt

    minutes = result.autoscaled.minutes
    arrivals, asked = _coarse(minutes["arrival_rps"]), _coarse(minutes["asked"])
    hours = [i * 10 / 60 for i in range(len(arrivals))]
    plt.clf()
    plt.plotsize(width, height)
    if not sys.stdout.isatty():
        plt.theme("clear")
    plt.plot(hours, arrivals, label="arrivals, req/s", marker="braille")
    plt.plot(hours, asked, label="replicas, autoscaled", yside="right", marker="hd")
    plt.plot(hours, [result.fixed_replicas] * len(hours), label="replicas, fixed at peak", yside="right",
             marker="-")
    plt.ylim(0, max(arrivals) * 1.05 or 1)
    plt.ylim(0, max(result.fixed_replicas, result.autoscaled.max_replicas) + 1, yside="right")
    plt.xlabel("hour of the trace (left: req/s, right: replicas)")
    return plt.build()


def _coarse(series: Any, minutes: int = 10) -> list[float]:
    """Means over `minutes`: a day is 144 points, as many as a terminal plot can show."""
    chunks = (series[i:i + minutes] for i in range(0, len(series), minutes))
    return [float(sum(chunk) / len(chunk)) for chunk in chunks]


def save_png(result: Any, path: Path) -> None:
    """1000 x 500 px: arrivals per minute and the replicas asked for, autoscaled and fixed, over the trace."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    a, f = result.autoscaled, result.fixed
    minutes = a.minutes
    hours = [i / 60 for i in range(len(minutes["arrival_rps"]))]
    fig = Figure(figsize=(10, 5), dpi=100)
    ax = fig.add_subplot()
    ax.fill_between(hours, minutes["arrival_rps"], color="0.8", step="post",
                    label="arrivals (req/s, per minute)")
    ax.set_xlabel("hour of the trace")
    ax.set_ylabel("arrivals, req/s")
    ax.set_xlim(0, max(hours[-1], 1 / 60))
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.step(hours, minutes["asked"], where="post", color="tab:blue",
               label="replicas asked for, autoscaled")
    right.step(hours, minutes["ready"], where="post", color="tab:blue", linestyle=":",
               label="replicas READY, autoscaled")
    right.axhline(result.fixed_replicas, color="tab:red",
                  label=f"replicas, fixed at peak ({result.fixed_replicas})")
    right.set_ylabel("replicas")
    right.set_ylim(0, max(result.fixed_replicas, a.max_replicas) + 1)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    right.legend(lines, labels, loc="upper left", fontsize=8)
    fig.suptitle(f"{result.trace}: autoscaled {a.replica_hours:.1f} replica-hours vs fixed "
                 f"{f.replica_hours:.1f} ({result.saving:.0%} saved); queue wait > SLO: {a.slo_misses:.2%} vs "
                 f"{f.slo_misses:.2%}", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        fail(f"cannot write {path}: {e}")
