"""`llmctl autoscale simulate`: run a trace through the policy (autoscaling/simulate.py) and show the result as a
table, a terminal plot, a PNG and JSON. Called by commands/autoscale.py, which parses the flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from llmctl.controlplane.commands.common import Output, console, fail, print_json, print_table
from llmctl.controlplane.commands.render import autoscale_policy_text
from llmctl.controlplane.commands.traffic import parse_window


def simulate_command(policy: Any, trace_arg: str, cold_start: str, concurrency: int, service_time: str,
                     slo: str, peak_rps: float, seed: int, png: Path | None, json_path: Path | None,
                     output: Output) -> None:
    from llmctl.controlplane.autoscaling import simulate as sim

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
    (lines, labels), (more_lines, more_labels) = ax.get_legend_handles_labels(), right.get_legend_handles_labels()
    right.legend(lines + more_lines, labels + more_labels, loc="upper left", fontsize=8)
    fig.suptitle(f"{result.trace}: autoscaled {a.replica_hours:.1f} replica-hours vs fixed "
                 f"{f.replica_hours:.1f} ({result.saving:.0%} saved); queue wait > SLO: {a.slo_misses:.2%} vs "
                 f"{f.slo_misses:.2%}", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        fail(f"cannot write {path}: {e}")
