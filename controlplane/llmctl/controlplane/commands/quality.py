"""`llmctl quality DEPLOYMENT | samples | reference`: how a deployment's sampled answers score against its
quality reference, revision by revision."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from llmctl.controlplane.commands.common import (
    AdminTokenOpt,
    ControlPlaneOpt,
    Output,
    OutputOpt,
    admin_client,
    default_command_group,
    print_json,
    print_table,
)
from llmctl.controlplane.commands.render import number, quality_policy_dict, quality_policy_text, when

SHOW = "show"


quality_app = typer.Typer(
    cls=default_command_group(SHOW),
    help="Quality sampling: production answers scored against a reference revision. "
         "`llmctl quality NAME` shows the per-revision report.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(quality_app, name="quality")


def interval_dict(value: Any) -> dict[str, float] | None:
    return None if value.mean == value.low == value.high == 0 else {
        "mean": value.mean, "low": value.low, "high": value.high}


def revision_quality_dict(r: Any) -> dict[str, Any]:
    return {
        "revision": r.revision, "current": r.current, "state": r.state, "samples": r.samples,
        "pending": r.pending, "dropped": r.dropped, "mean_logprob": interval_dict(r.mean_logprob),
        "top1": interval_dict(r.top1), "baseline_mean_logprob": interval_dict(r.baseline_mean_logprob),
        "baseline_top1": interval_dict(r.baseline_top1), "judgement": json.loads(r.details_json or "{}"),
    }


def _interval_text(value: dict[str, float] | None, digits: int) -> str | None:
    if value is None:
        return None
    half = (value["high"] - value["low"]) / 2
    return f"{value['mean']:.{digits}f} ± {half:.{digits}f}"


@quality_app.command(SHOW, hidden=True)
def show(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Per revision: sampled answers scored, both scores with 95% intervals, the state, dropped samples."""
    with admin_client(control_plane, admin_token) as client:
        report = client.get_quality(name)
    revisions = [revision_quality_dict(r) for r in report.revisions]
    policy = quality_policy_dict(report.policy)
    if output == Output.json:
        print_json({"deployment": report.deployment, "policy": policy, "revisions": revisions})
        return
    typer.echo(f"{report.deployment}: {quality_policy_text(policy)}")
    if not revisions:
        typer.echo("no sampled answers yet")
        return
    print_table(
        None,
        ["REV", "STATE", "SCORED", "PENDING", "DROPPED", "LOGPROB/TOK", "REF LOGPROB/TOK", "TOP-1", "REF TOP-1",
         "JUDGEMENT"],
        [
            [f"{r['revision']}{' *' if r['current'] else ''}", r["state"], r["samples"], r["pending"], r["dropped"],
             _interval_text(r["mean_logprob"], 3), _interval_text(r["baseline_mean_logprob"], 3),
             _interval_text(r["top1"], 3), _interval_text(r["baseline_top1"], 3),
             r["judgement"].get("summary")]
            for r in revisions
        ],
    )


@quality_app.command("samples")
def samples(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    revision: Annotated[int | None, typer.Option("--revision", help="Only this revision's samples")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Newest N samples")] = 20,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """The stored samples (prompts and answers, admin only), newest first, with their scores."""
    with admin_client(control_plane, admin_token) as client:
        found = client.list_quality_samples(name, revision=revision, limit=limit)
    rows = [_sample_dict(s) for s in found]
    if output == Output.json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no stored samples" + (f" for revision {revision}" if revision is not None else ""))
        return
    print_table(
        None,
        ["ID", "REV", "AT", "TENANT", "STATUS", "LOGPROB/TOK", "REF", "TOP-1", "PROMPT", "ANSWER"],
        [
            [s["id"], s["revision"], when(s["at"]), s["tenant"], s["status"], number(s["mean_logprob"], 3),
             number(s["baseline_mean_logprob"], 3), number(s["top1"], 3), _short(_prompt_text(s["request"])),
             _short(s["answer"] or s["error"] or "")]
            for s in rows
        ],
    )


@quality_app.command("reference")
def reference(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    revision: Annotated[int, typer.Argument(help="The revision answers are judged against")],
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Judge the deployment's answers against this revision (its scorer replica follows)."""
    with admin_client(control_plane, admin_token) as client:
        deployment = client.set_quality_reference(name, revision)
    if output == Output.json:
        print_json(quality_policy_dict(deployment.quality))
        return
    typer.echo(f"{name}: quality reference is revision {deployment.quality.reference_revision}")


def _sample_dict(s: Any) -> dict[str, Any]:
    scores = {f: getattr(s, f) if s.HasField(f) else None
              for f in ("mean_logprob", "top1", "baseline_mean_logprob", "baseline_top1")}
    return {"id": s.id, "revision": s.revision, "tenant": s.tenant or None, "at": s.at, "kind": s.kind,
            "request": json.loads(s.request_json or "{}"), "answer": s.answer, "status": s.status,
            "error": s.error or None, **scores}


def _prompt_text(request: dict[str, Any]) -> str:
    messages = request.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        return content if isinstance(content, str) else json.dumps(content)
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

