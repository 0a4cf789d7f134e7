"""`llmctl deploy | rollback | revisions | status | scale`: deployments and their revisions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmctl.agent.cli import (
    BlockSize,
    ChunkedPrefill,
    Dtype,
    GroupSize,
    KvCacheDtype,
    KvCacheMemory,
    MaxBatchedTokens,
    MaxModelLen,
    MaxNumSeqs,
    NgramMax,
    NgramMin,
    NumKvBlocks,
    NumSpeculativeTokens,
    PrefixCaching,
    Quantization,
    SpeculativeMethod,
    SpeculativeModel,
    Threads,
    engine_config_object,
    given_on_command_line,
    quant_flags,
)
from llmctl.controlplane.commands.common import (
    AdminTokenOpt,
    ControlPlaneOpt,
    Output,
    OutputOpt,
    admin_client,
    console,
    fail,
    print_json,
    print_table,
)
from llmctl.controlplane.commands.render import (
    autoscale_policy_dict,
    autoscale_policy_text,
    config_changes,
    deployment_dict,
    number,
    quality_policy_dict,
    quality_policy_text,
    revision_dict,
    value_text,
    when,
)

DEFAULT_WAIT_TIMEOUT_S = 900.0
# CLI parameter -> EngineConfig field, for the engine flags deploy shares with `llmctl serve`.
ENGINE_FLAGS = {
    "dtype": "dtype",
    "block_size": "block_size",
    "num_kv_blocks": "num_kv_blocks",
    "kv_cache_memory": "kv_cache_memory",
    "kv_cache_dtype": "kv_cache_dtype",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "max_model_len": "max_model_len",
    "enable_prefix_caching": "enable_prefix_caching",
    "enable_chunked_prefill": "enable_chunked_prefill",
    "threads": "num_threads",
    "quantization": "quantization",
    "group_size": "quantization_group_size",
    "speculative_method": "speculative_method",
    "speculative_model": "speculative_model",
    "num_speculative_tokens": "num_speculative_tokens",
    "ngram_max": "ngram_max",
    "ngram_min": "ngram_min",
}

Wait = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait until the revision serves on every replica")
]
WaitTimeout = Annotated[
    float, typer.Option("--timeout", help="With --wait: give up (exit 1) after this many seconds")
]


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
    app.command("revisions")(revisions)
    app.command("status")(status)
    app.command("scale")(scale)
    app.command("cache")(cache)


def deploy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Deployment name; clients use it as the model name")],
    model: Annotated[str, typer.Option("--model", help="Registered name, HF folder, .gguf file or hub id")],
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", help="Replica count (default: unchanged; 1 for a new deployment)"),
    ] = None,
    dtype: Dtype = "auto",
    block_size: BlockSize = 16,
    num_kv_blocks: NumKvBlocks = None,
    kv_cache_memory: KvCacheMemory = None,
    kv_cache_dtype: KvCacheDtype = "auto",
    max_num_seqs: MaxNumSeqs = 64,
    max_num_batched_tokens: MaxBatchedTokens = 2048,
    max_model_len: MaxModelLen = None,
    enable_prefix_caching: PrefixCaching = True,
    enable_chunked_prefill: ChunkedPrefill = True,
    threads: Threads = None,
    quantization: Quantization = "none",
    group_size: GroupSize = "auto",
    speculative_method: SpeculativeMethod = "none",
    speculative_model: SpeculativeModel = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    ngram_min: NgramMin = 1,
    engine_config_json: Annotated[
        str | None,
        typer.Option(
            "--engine-config", help="The whole EngineConfig as a JSON object, instead of the engine flags"
        ),
    ] = None,
    quality_sample_rate: Annotated[
        float | None,
        typer.Option("--quality-sample-rate", help="Fraction of answers scored against the quality reference "
                                                   "(0 = off; default: unchanged, 0.01 for a new deployment)"),
    ] = None,
    quality_auto_rollback: Annotated[
        bool | None,
        typer.Option("--quality-auto-rollback/--no-quality-auto-rollback",
                     help="Roll back when the current revision's quality turns degraded (default: unchanged)"),
    ] = None,
    quality_threshold: Annotated[
        float | None,
        typer.Option("--quality-threshold", help="Tolerated drop of the reference's mean log-likelihood per "
                                                 "answer token, in nats (default: unchanged)"),
    ] = None,
    wait: Wait = True,
    timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT_S,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Create a deployment, or roll out a new revision when the model or engine config changed.

    The engine config is the whole recipe (flags not given take their defaults), like `llmctl serve`.
    """
    given = [p for p in ctx.params if p in ENGINE_FLAGS and given_on_command_line(ctx, p)]
    flags = {ENGINE_FLAGS[p]: ctx.params[p] for p in given}
    # --quantization none / --group-size auto are spelled for people; the config stores None.
    quant = quant_flags(quantization, group_size)
    flags.update({k: quant[k] for k in ("quantization", "quantization_group_size") if k in flags})
    if engine_config_json is not None:
        flags = engine_config_object(engine_config_json, given)
    _validate(name, model, flags)
    if replicas is not None and replicas < 0:
        fail(f"--replicas must be >= 0, got {replicas}")
    if quality_sample_rate is not None and not 0 <= quality_sample_rate <= 1:
        fail(f"--quality-sample-rate must be in [0, 1] (0 = off), got {quality_sample_rate:g}")
    if quality_threshold is not None and not quality_threshold > 0:
        fail(f"--quality-threshold must be > 0 nats per token, got {quality_threshold:g}")
    with admin_client(control_plane, admin_token) as client:
        after = client.last_event_id(deployment=name) if wait else 0
        response = client.deploy(name, model, flags, replicas, quality_sample_rate=quality_sample_rate,
                                 quality_auto_rollback=quality_auto_rollback, quality_threshold=quality_threshold)
        deployment = response.deployment
        verb = "rolling out new revision" if response.created_revision else "unchanged at revision"
        if output == Output.table:
            typer.echo(f"{name}: {verb} {response.revision} ({model})")
        if wait:
            deployment = _wait(client, name, response.revision, after, timeout, output)
    if output == Output.json:
        print_json(
            {
                "deployment": deployment_dict(deployment),
                "revision": response.revision,
                "created_revision": response.created_revision,
            }
        )


def rollback(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    to: Annotated[
        int | None, typer.Option("--to", help="Revision number (default: the one before current)")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until it serves on every replica")
    ] = False,
    timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT_S,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Point a deployment back at an earlier revision (recorded as an event; no revision is created)."""
    with admin_client(control_plane, admin_token) as client:
        after = client.last_event_id(deployment=name) if wait else 0
        deployment = client.rollback(name, to)
        if output == Output.table:
            typer.echo(f"{name}: rolled back to revision {deployment.revision}")
        if wait:
            deployment = _wait(client, name, deployment.revision, after, timeout, output)
    if output == Output.json:
        print_json(deployment_dict(deployment))


def revisions(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    diff: Annotated[
        tuple[int, int] | None,
        typer.Option(
            "--diff", metavar="A B", help="Compare two revisions (default: the previous and current)"
        ),
    ] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """List a deployment's revisions and the engine-config keys that differ between two of them."""
    with admin_client(control_plane, admin_token) as client:
        found = client.list_revisions(name)
        report = client.get_quality(name)
        scaling = client.get_autoscaling(name, limit=1)
    judged = {r.revision: r for r in report.revisions}
    policy = quality_policy_dict(report.policy)
    autoscaling = autoscale_policy_dict(scaling.policy) if scaling.HasField("policy") else None
    by_number = {r.number: r for r in found}
    pair = diff or _default_pair(found)
    compared = None
    if pair is not None:
        missing = [n for n in pair if n not in by_number]
        if missing:
            fail(f"deployment {name!r} has no revision {missing[0]}; it has {', '.join(map(str, by_number))}")
        old, new = (revision_dict(by_number[n]) for n in pair)
        compared = {
            "from": pair[0],
            "to": pair[1],
            "changes": config_changes(
                {**old["engine_config"], "model": old["model"]},
                {**new["engine_config"], "model": new["model"]},
            ),
        }
    if output == Output.json:
        listed = [{**revision_dict(r), "quality": {"state": q.state, "samples": q.samples}
                   if (q := judged.get(r.number)) is not None else None} for r in found]
        print_json({"deployment": name, "revisions": listed, "quality": policy, "autoscaling": autoscaling,
                    "diff": compared})
        return
    typer.echo(quality_policy_text(policy))
    typer.echo(autoscale_policy_text(autoscaling))
    print_table(
        f"{name}: revisions",
        ["REV", "CURRENT", "MODEL", "QUALITY", "CREATED", "BY", "REASON"],
        [
            [r.number, "*" if r.current else "", r.model, _quality_cell(judged.get(r.number)),
             when(r.created_at), r.created_by, r.reason]
            for r in found
        ],
    )
    if compared is not None:
        typer.echo("")
        if not compared["changes"]:
            typer.echo(f"revisions {pair[0]} and {pair[1]} have the same model and engine config")
        else:
            print_table(
                f"changes from revision {pair[0]} to {pair[1]}",
                ["KEY", str(pair[0]), str(pair[1])],
                [[c["key"], value_text(c["from"]), value_text(c["to"])] for c in compared["changes"]],
            )


def status(
    name: Annotated[str | None, typer.Argument(help="One deployment (default: all of them)")] = None,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Deployments with their revision, replicas and live stats; one deployment in detail."""
    with admin_client(control_plane, admin_token) as client:
        found = [client.get_deployment(name)] if name else client.list_deployments()
    if output == Output.json:
        print_json(deployment_dict(found[0]) if name else [deployment_dict(d) for d in found])
        return
    if not name:
        if not found:
            typer.echo("no deployments yet; create one with `llmctl deploy NAME --model MODEL`")
            return
        print_table(
            None,
            ["NAME", "MODEL", "REV", "READY", "QUALITY", "QUANT", "KV", "REQ/S", "TTFT P95", "TOK/S", "QUEUE"],
            [
                [
                    d.name,
                    d.model,
                    d.revision,
                    f"{d.ready_replicas}/{d.desired_replicas}",
                    d.quality_state or "ok",
                    d.weight_quantization or None,
                    d.kv_cache_dtype or None,
                    *_stats_cells(deployment_dict(d)["stats"]),
                ]
                for d in found
            ],
        )
        return
    d = deployment_dict(found[0])
    typer.echo(
        f"{d['name']}: {d['model']} revision {d['revision']}, "
        f"{d['ready_replicas']}/{d['desired_replicas']} replicas ready, quality {d['quality_state']}"
    )
    typer.echo(f"  {quality_policy_text(d['quality'])}")
    typer.echo(f"  {autoscale_policy_text(d['autoscaling'])}")
    req_s, ttft, tok_s, queue = _stats_cells(d["stats"])
    kv = number(d["stats"]["kv_cache_usage"] and 100 * d["stats"]["kv_cache_usage"], 0, "%")
    typer.echo(
        f"  req/s {req_s or '-'}  ttft p95 {ttft or '-'}  tok/s {tok_s or '-'}  "
        f"queue {queue or '-'}  kv cache {kv or '-'}"
    )
    if d["replicas"]:
        print_table(
            None,
            ["REPLICA", "ROLE", "NODE", "REV", "STATE", "URL", "RESTARTS", "ERROR"],
            [
                [r["id"], r["role"], r["node"], r["revision"], r["state"], r["url"], r["restarts"], r["error"]]
                for r in d["replicas"]
            ],
        )


def scale(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    replicas: Annotated[int, typer.Argument(help="Desired replica count")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until exactly N replicas serve")
    ] = False,
    timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT_S,
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Set a deployment's desired replica count."""
    if replicas < 0:
        fail(f"replica count must be >= 0, got {replicas}")
    with admin_client(control_plane, admin_token) as client:
        after = client.last_event_id(deployment=name) if wait else 0
        deployment = client.scale(name, replicas)
        if output == Output.table:
            typer.echo(f"{name}: scaled to {deployment.desired_replicas} replica(s)")
            room = fleet_room(client.list_nodes(), client.list_deployments(), name)
            if replicas > room:
                console(stderr=True).print(
                    f"[yellow]only {room} replica slot(s) are free for {name} on the healthy nodes (a CPU node "
                    f"takes one replica per core, a GPU node one per GPU): it stays at {room} until a node joins "
                    "or frees a slot; an agent's --max-replicas allows more on purpose. See `llmctl events`.[/]"
                )
        if wait:
            deployment = _wait(client, name, deployment.revision, after, timeout, output)
    if output == Output.json:
        print_json(deployment_dict(deployment))


def cache(
    name: Annotated[str, typer.Argument(help="Deployment name")],
    semantic: Annotated[
        str,
        typer.Option("--semantic", help="The semantic response cache: on (the default threshold), off, or a "
                                        "cosine-similarity threshold in (0, 1], e.g. 0.97"),
    ],
    output: OutputOpt = Output.table,
    control_plane: ControlPlaneOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Let the gateway answer reworded questions to a deployment from its response cache (docs/caching.md).

    Needs the exact cache (`llmctl server --response-cache-mb N`): without it the setting is kept but unused.
    Takes effect at the next reconcile pass.
    """
    from llmctl.controlplane.gateway.semantic_cache import DEFAULT_THRESHOLD

    choice = semantic.strip().lower()
    if choice in ("on", "off"):
        threshold = DEFAULT_THRESHOLD if choice == "on" else None
    else:
        try:
            threshold = float(choice)
        except ValueError:
            threshold = -1.0
        if not 0 < threshold <= 1:
            fail(f"--semantic must be on, off or a similarity in (0, 1], got {semantic!r}")
    with admin_client(control_plane, admin_token) as client:
        response = client.set_semantic_cache(name, threshold)
    deployment = response.deployment
    stored = deployment.semantic_cache_threshold if deployment.HasField("semantic_cache_threshold") else None
    if output == Output.json:
        print_json({"name": deployment.name, "semantic_cache_threshold": stored, "warning": response.warning or None})
    else:
        typer.echo(f"{name}: semantic cache " + (f"on at similarity {stored:g}" if stored is not None else "off"))
    if response.warning:
        typer.echo(f"warning: {response.warning}", err=True)


def fleet_room(nodes: list[Any], deployments: list[Any], name: str) -> int:
    """Replicas deployment `name` can have on the healthy nodes: their slots, less the replicas other deployments
    hold there (from one listing of the deployments, so that a replica placed meanwhile is not counted twice)."""
    from llmctl.controlplane.proto import llmctl_pb2 as pb

    healthy = {n.name: n.max_replicas for n in nodes if n.state == "healthy"}
    others = sum(1 for d in deployments if d.name != name for r in d.replicas
                 if r.node in healthy and r.state != pb.REPLICA_STATE_STOPPED)
    return max(0, sum(healthy.values()) - others)


def _wait(client: Any, name: str, revision: int, after: int, timeout: float, output: Output) -> Any:
    from llmctl.controlplane.commands.wait import wait_for_revision

    err = console(stderr=True)
    if err.is_terminal:
        with err.status(f"waiting for {name} revision {revision}") as spinner:
            deployment = wait_for_revision(
                client,
                name,
                revision,
                after_event_id=after,
                timeout_s=timeout,
                progress=lambda line: spinner.update(line),
            )
    else:
        deployment = wait_for_revision(
            client,
            name,
            revision,
            after_event_id=after,
            timeout_s=timeout,
            progress=lambda line: err.print(line),
        )
    if output == Output.table:
        typer.echo(f"{name}: revision {revision} ready on {deployment.ready_replicas} replica(s)")
    return deployment


def _stats_cells(stats: dict[str, Any]) -> list[str | None]:
    ttft = stats["ttft_p95_s"]
    return [
        number(stats["requests_per_s"], 1),
        number(ttft and ttft * 1000, 0, "ms"),
        number(stats["tokens_per_s"], 1),
        number(stats["queue_depth"], 0),
    ]


def _validate(name: str, model: str, flags: dict[str, Any]) -> None:
    """Check the recipe as the control plane will (the engine's EngineConfig plus field types) before
    anything is sent, so a typo exits 2 here instead of becoming a revision that cannot start."""
    from llmctl.controlplane.errors import InvalidArgument
    from llmctl.controlplane.services import check_name
    from llmctl.controlplane.services.deployments import validated_engine_config

    if not model.strip():
        fail("--model must name a model: a registered name, an HF folder, a .gguf file or a hub id")
    try:
        check_name("deployment", name)
        validated_engine_config(model, flags)
    except InvalidArgument as e:
        fail(e.message)


def _default_pair(found: list[Any]) -> tuple[int, int] | None:
    """The revision before the current one and the current one; when the current one is the first (after
    a rollback to it), the current one and the next."""
    current = next((r.number for r in found if r.current), None)
    if current is None:
        return None
    earlier = [r.number for r in found if r.number < current]
    later = [r.number for r in found if r.number > current]
    if earlier:
        return max(earlier), current
    return (current, min(later)) if later else None


def _quality_cell(judged: Any) -> str | None:
    """A revision's quality judgement and sample count, for listings; None before any sample."""
    if judged is None:
        return None
    return f"{judged.state} ({judged.samples} scored)"
