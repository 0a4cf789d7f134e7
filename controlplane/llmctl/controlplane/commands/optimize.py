"""`llmctl optimize DEPLOYMENT --goal ...` and `llmctl optimize status | list | cancel | report`.

A run is a control-plane job: this command starts it and, unless --detach, follows it by polling until it
ends. Leaving (Ctrl-C) stops only the following. Every flag is checked here, before anything is sent.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from llmctl.controlplane.commands.common import (
    EXIT_SYSTEM,
    AdminTokenOpt,
    ControlPlaneOpt,
    Output,
    OutputOpt,
    admin_client,
    console,
    default_command_group,
    fail,
    print_json,
    print_table,
)
from llmctl.controlplane.commands.render import when
from llmctl.controlplane.commands.traffic import parse_window
from llmctl.controlplane.errors import InvalidArgument, Unavailable
from llmctl.controlplane.optimizer import report as render
from llmctl.controlplane.optimizer.options import GOALS, OptimizeOptions, check_workload

START = "start"
POLL_S = 2.0
OUTAGE_GRACE_S = 120.0
"""While following: how long the control plane may be unreachable (a restart; the run resumes) before giving up."""
FLAGS = {
    "goal": "--goal", "max_quality_drop": "--max-quality-drop", "min_gain": "--min-gain",
    "slo_ttft_p95_ms": "--slo-ttft-p95", "slo_tpot_p95_ms": "--slo-tpot-p95", "techniques": "--techniques",
    "budget_minutes": "--budget-minutes", "repeats": "--repeats", "traffic_window_minutes": "--traffic-window",
}
"""OptimizeOptions fields by the flag that sets them, so a refusal names what the operator typed."""
_COUNT = re.compile(r"(\d+(?:\.\d+)?)([kmbg]?)", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


optimize_app = typer.Typer(
    cls=default_command_group(START),
    help="Tune a deployment's engine config for a goal: measure a baseline, try one technique at a time on "
         "trial replicas, keep what gains beyond noise within the quality budget. "
         "`llmctl optimize NAME --goal throughput` starts a run (a deployment named like a subcommand: "
         "`llmctl optimize start NAME`).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(optimize_app, name="optimize")


class ReportFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


RunArg = Annotated[int | None, typer.Argument(help="Run id (`llmctl optimize list` shows them)", show_default=False)]
DeploymentOpt = Annotated[
    str | None, typer.Option("--deployment", "-d", help="Without RUN: this deployment's newest run")
]


@optimize_app.command(START)
def start(
    deployment: Annotated[str, typer.Argument(help="Deployment to optimize")],
    goal: Annotated[str, typer.Option("--goal", "-g", help=f"What to improve: {' | '.join(GOALS)}")],
    max_quality_drop: Annotated[str | None, typer.Option(
        "--max-quality-drop", metavar="PERCENT", show_default=False,
        help="Largest tolerated drop on every quality metric, as 2% or 0.02 (default 2%)")] = None,
    min_gain: Annotated[str | None, typer.Option(
        "--min-gain", metavar="PERCENT", show_default=False,
        help="A gain counts when the low end of its 95% interval beats this, as 5% or 0.05 (default 5%)")] = None,
    slo_ttft_p95: Annotated[float | None, typer.Option(
        "--slo-ttft-p95", metavar="MS", help="Reject a candidate whose p95 time to first token exceeds this")] = None,
    slo_tpot_p95: Annotated[float | None, typer.Option(
        "--slo-tpot-p95", metavar="MS", help="Reject a candidate whose p95 time per output token exceeds this")] = None,
    workload: Annotated[str | None, typer.Option(
        "--workload", metavar="FILE", help="JSON object of bench workload keys (requests, input_len, output_len, "
                                           "shared_prefix_len, request_rate, seed, lengths); absent keys take "
                                           "defaults",
        show_default=False)] = None,
    from_traffic: Annotated[bool, typer.Option(
        "--from-traffic", help="Measure with a workload made from the deployment's recorded gateway traffic "
                               "(`llmctl traffic NAME` shows it)")] = False,
    traffic_window: Annotated[str | None, typer.Option(
        "--traffic-window", metavar="DURATION", help="With --from-traffic: how far back, as 90s, 60m, 2h "
                                                     "(default 60m)", show_default=False)] = None,
    techniques: Annotated[str | None, typer.Option(
        "--techniques", metavar="A,B,...", help="Only these techniques, in this order (default: every one that "
                                                "addresses the bottleneck, in order of effort)")] = None,
    advisory: Annotated[bool, typer.Option(
        "--advisory", help="Measure and recommend; create no revision")] = False,
    budget_minutes: Annotated[float | None, typer.Option(
        "--budget-minutes", help="Start no new technique after this long (default 60)", show_default=False)] = None,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", help="Candidate measurements per step (default 3)", show_default=False)] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start the run and return; do not follow it")] = False,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Start optimizing DEPLOYMENT and follow the run to its end.

    Exit 0 when the run succeeded, 1 when it failed or was cancelled. Ctrl-C stops following; the run goes on
    (`llmctl optimize status RUN` looks again)."""
    _check_name(deployment)
    if from_traffic and workload is not None:
        fail("give --workload FILE or --from-traffic, not both")
    if traffic_window is not None and not from_traffic:
        fail("--traffic-window needs --from-traffic")
    given = {
        "max_quality_drop": None if max_quality_drop is None else parse_fraction("--max-quality-drop",
                                                                                 max_quality_drop),
        "min_gain": None if min_gain is None else parse_fraction("--min-gain", min_gain),
        "slo_ttft_p95_ms": slo_ttft_p95, "slo_tpot_p95_ms": slo_tpot_p95,
        "techniques": None if techniques is None else tuple(t.strip() for t in techniques.split(",") if t.strip()),
        "advisory": advisory or None, "budget_minutes": budget_minutes, "repeats": repeats,
        "workload": None if workload is None else read_workload(workload),
        "from_traffic": from_traffic or None,
        "traffic_window_minutes": None if traffic_window is None else parse_window("--traffic-window",
                                                                                   traffic_window) / 60,
    }
    options = build_options(goal, {k: v for k, v in given.items() if v is not None})
    payload = {k: v for k, v in options.to_dict().items() if k != "goal"}
    with admin_client(control_plane, admin_token) as client:
        run = client.start_optimization(deployment, options.goal, payload)
        if detach:
            if output == Output.json:
                print_json(run_dict(run))
            else:
                typer.echo(f"run {run.id}: optimizing {run.deployment} for {run.goal}; "
                           f"`llmctl optimize status {run.id}` shows it, `llmctl optimize cancel {run.id}` stops it")
            return
        progress = typer.echo if output == Output.table else (lambda line: typer.echo(line, err=True))
        progress(f"run {run.id}: optimizing {run.deployment} for {run.goal} (Ctrl-C stops following; the run "
                 "goes on)")
        try:
            run = follow_run(client, run.id, progress)
        except KeyboardInterrupt:
            typer.echo(f"stopped following run {run.id}; it goes on: `llmctl optimize status {run.id}` shows it, "
                       f"`llmctl optimize cancel {run.id}` stops it", err=True)
            return
    if output == Output.json:
        print_json(run_dict(run))
    else:
        typer.echo("")
        _print_report(report_dict(run), reasons=False)
    if run.state != "succeeded":
        error = report_dict(run).get("error") or run.summary
        fail(f"run {run.id} {run.state}" + (f": {error}" if error else ""), EXIT_SYSTEM)


@optimize_app.command("status")
def status(
    run: RunArg = None,
    deployment: DeploymentOpt = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Where a run stands: its steps so far, each with its numbers and decision."""
    run_id, name = _target("status", run, deployment)
    with admin_client(control_plane, admin_token) as client:
        found = client.get_optimization(run_id=run_id, deployment=name)
    if output == Output.json:
        print_json(run_dict(found))
        return
    _print_report(report_dict(found))


@optimize_app.command("list")
def list_runs(
    deployment: Annotated[str | None, typer.Option("--deployment", "-d", help="Only this deployment's")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="Newest N runs")] = 20,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Optimization runs, newest first."""
    with admin_client(control_plane, admin_token) as client:
        found = client.list_optimizations(deployment or "", limit)
    if output == Output.json:
        print_json([run_dict(r) for r in found])
        return
    if not found:
        typer.echo("no optimization runs" + (f" for {deployment}" if deployment else ""))
        return
    print_table(
        None,
        ["RUN", "DEPLOYMENT", "GOAL", "STATE", "STARTED", "WALL", "SUMMARY"],
        [[r.id, r.deployment, r.goal, r.state, when(r.created_at), render.wall_time(report_dict(r)),
          r.summary or None] for r in found],
    )


@optimize_app.command("cancel")
def cancel(
    run: RunArg = None,
    deployment: Annotated[str | None, typer.Option(
        "--deployment", "-d", help="Without RUN: this deployment's running run")] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Stop a run and its trial replicas; the deployment keeps serving the revision it serves."""
    run_id, name = _target("cancel", run, deployment)
    with admin_client(control_plane, admin_token) as client:
        found = client.cancel_optimization(run_id=run_id, deployment=name)
    if output == Output.json:
        print_json(run_dict(found))
        return
    typer.echo(f"run {found.id} of {found.deployment}: {found.state}; its trial replicas stop and "
               f"{found.deployment} keeps serving the revision it serves")


@optimize_app.command("report")
def report(
    run: RunArg = None,
    deployment: DeploymentOpt = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="table, markdown (for docs) or json")] = (
        ReportFormat.table),
    traffic: Annotated[str | None, typer.Option(
        "--traffic", metavar="TOKENS-PER-DAY", help="Also project replicas and monthly cost at this many output "
                                                    "tokens a day (50000000, 50M, 2.5B)")] = None,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """The run's table per step (memory, throughput, latency, quality deltas, cost, decision) and every reason."""
    run_id, name = _target("report", run, deployment)
    tokens_per_day = None if traffic is None else parse_count("--traffic", traffic)
    with admin_client(control_plane, admin_token) as client:
        found = client.get_optimization(run_id=run_id, deployment=name)
    data = report_dict(found)
    projected = None
    if tokens_per_day is not None:
        try:
            projected = render.projection(data, tokens_per_day)
        except ValueError as e:
            fail(f"--traffic: {e}")
    if fmt == ReportFormat.json:
        print_json(data | ({"projection": projected} if projected else {}))
    elif fmt == ReportFormat.markdown:
        typer.echo(render.markdown(data, tokens_per_day), nl=False)
    else:
        _print_report(data, projected=projected)


def follow_run(
    client: Any, run_id: int, progress: Callable[[str], None], *, poll_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll the run until it ends, reporting the bottleneck once and each step as its state changes; returns
    the final OptimizationRun. A control plane that is briefly unreachable (restarting) is waited for."""
    seen: dict[Any, Any] = {}
    unreachable_since: float | None = None
    while True:
        try:
            run = client.get_optimization(run_id=run_id)
        except Unavailable:
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                progress("control plane unreachable; still following (the run resumes when it is back)")
            elif now - unreachable_since > OUTAGE_GRACE_S:
                raise
        else:
            unreachable_since = None
            for line in progress_lines(report_dict(run), seen):
                progress(line)
            if run.state != "running":
                return run
        sleep(POLL_S if poll_s is None else poll_s)


def progress_lines(report: dict[str, Any], seen: dict[Any, Any]) -> list[str]:
    """What changed since `seen` (updated in place): the bottleneck once named, each step whose state or reason
    moved. Pending steps are not announced; they show when they start."""
    lines = []
    bottleneck = report.get("bottleneck")
    if bottleneck and "bottleneck" not in seen:
        seen["bottleneck"] = True
        lines.append(f"bottleneck: {bottleneck.get('name', '?')}: {bottleneck.get('why') or ''}".rstrip(": "))
    for step in report.get("steps") or []:
        # A running step may rewrite its reason as it goes; only a new state is news then.
        state = step.get("state")
        key, now = ("step", step.get("number")), state if state == "running" else (state, step.get("reason"))
        if step.get("state") == "pending" or seen.get(key) == now:
            continue
        seen[key] = now
        lines.append(render.step_line(step))
    return lines


def parse_fraction(flag: str, text: str) -> float:
    """'2%' or '0.02' -> 0.02. A bare number above 1 is refused: 2 could mean 2% or 200%."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        fail(f"{flag} takes a fraction (0.02) or a percent (2%), got {text!r}")
    if not math.isfinite(value):
        fail(f"{flag} takes a fraction (0.02) or a percent (2%), got {text!r}")
    if percent:
        return value / 100
    if value > 1:
        fail(f"{flag} {text}: give a fraction (like {value / 100:g}) or a percent (like {value:g}%); a bare number "
             "above 1 is ambiguous")
    return value


def parse_count(flag: str, text: str) -> int:
    """'50000000', '50_000_000', '50M', '2.5B' -> a positive integer."""
    match = _COUNT.fullmatch(text.strip().replace("_", "").replace(",", ""))
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()] if match else 0
    if value < 1:
        fail(f"{flag} takes a positive number of output tokens per day (50000000, 50M, 2.5B), got {text!r}")
    return int(value)


def read_workload(path: str) -> dict[str, Any]:
    """The --workload file's JSON object, checked as the control plane will check it."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        fail(f"--workload {path}: no such file")
    except OSError as e:
        fail(f"--workload {path}: cannot read it ({e.strerror or e})")
    except ValueError as e:
        fail(f"--workload {path} is not valid JSON: {e}")
    try:
        return check_workload(raw)
    except InvalidArgument as e:
        fail(f"--workload {path}: {e.message}")


def build_options(goal: str, given: dict[str, Any]) -> OptimizeOptions:
    """OptimizeOptions from the flags given (the rest take its defaults); a refusal names the flag."""
    try:
        return OptimizeOptions(goal=goal, **given)
    except InvalidArgument as e:
        message = e.message
        for field, flag in FLAGS.items():
            if message.startswith(f"{field} "):
                message = flag + message[len(field):]
                break
        fail(message)


def run_dict(run: Any) -> dict[str, Any]:
    """An OptimizationRun for `--output json`: its columns and (where the server sent it) the whole report."""
    return {
        "id": run.id, "deployment": run.deployment, "state": run.state, "goal": run.goal,
        "created_at": run.created_at, "finished_at": run.finished_at or None, "summary": run.summary or None,
        "report": _parsed(run.report_json),
    }


def report_dict(run: Any) -> dict[str, Any]:
    """The report, with the run's own columns over it (they are what the server stores as the run's state)."""
    columns = {"id": run.id, "deployment": run.deployment, "state": run.state, "goal": run.goal,
               "created_at": run.created_at or None, "finished_at": run.finished_at or None,
               "summary": run.summary or None}
    return (_parsed(run.report_json) or {}) | columns


def _parsed(raw: str) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _target(command: str, run: int | None, deployment: str | None) -> tuple[int, str]:
    if run is None and not deployment:
        fail(f"name a run (`llmctl optimize {command} RUN`) or a deployment (--deployment NAME); "
             "`llmctl optimize list` shows the runs")
    if run is not None and run < 1:
        fail(f"RUN is a run id (1 or more), got {run}")
    return run or 0, deployment or ""


def _check_name(deployment: str) -> None:
    from llmctl.controlplane.services import check_name

    try:
        check_name("deployment", deployment)
    except InvalidArgument as e:
        fail(e.message)


def _print_report(data: dict[str, Any], *, reasons: bool = True, projected: dict[str, Any] | None = None) -> None:
    out = console()
    for line in render.header_lines(data):
        out.print(line, markup=False)
    if not data.get("steps"):
        out.print("no steps yet", markup=False)
        return
    out.print()
    out.print(render.steps_table(data))
    if reasons:
        out.print()
        out.print(render.reasons_table(data))
    if projected:
        out.print()
        out.print(f"at {projected['tokens_per_day']:,} output tokens per day:", markup=False)
        out.print(render.projection_table(projected))
