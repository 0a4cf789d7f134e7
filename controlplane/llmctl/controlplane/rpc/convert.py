"""Proto <-> domain, in one place: SQL rows and in-memory telemetry to wire messages and back."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from llmctl.controlplane.autoscaling.policy import AutoscalePolicy, Evaluation, Mode
from llmctl.controlplane.db.models import (
    AuditRecord,
    AutoscaleDecision,
    Autoscaling,
    Deployment,
    Event,
    Node,
    OptimizationRun,
    QualitySample,
    Replica,
    ReplicaRole,
    ReplicaState,
    Revision,
    Tenant,
)
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.fleet import Fleet, NodeTelemetry
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.services.autoscaling import STORED_FIELDS, make_policy
from llmctl.controlplane.services.quality import RevisionSummary, reference_revision

_STATE_TO_PROTO = {
    ReplicaState.PENDING: pb.REPLICA_STATE_PENDING,
    ReplicaState.STARTING: pb.REPLICA_STATE_STARTING,
    ReplicaState.READY: pb.REPLICA_STATE_READY,
    ReplicaState.DRAINING: pb.REPLICA_STATE_DRAINING,
    ReplicaState.STOPPED: pb.REPLICA_STATE_STOPPED,
    ReplicaState.FAILED: pb.REPLICA_STATE_FAILED,
}
_STATE_FROM_PROTO = {value: state for state, value in _STATE_TO_PROTO.items()}


def unix(at: datetime | None) -> float:
    return at.timestamp() if at is not None else 0.0


def state_to_proto(state: ReplicaState) -> int:
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> ReplicaState:
    try:
        return _STATE_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(
            f"replica state {pb.ReplicaState.Name(value) if value in pb.ReplicaState.values() else value} "
            "is not a state a replica can be in; send PENDING, STARTING, READY, DRAINING, STOPPED or FAILED"
        ) from None


def engine_config_from_json(text: str) -> dict[str, Any]:
    """A DeployRequest's engine_config_json; empty means defaults."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"engine_config_json is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"engine_config_json must be a JSON object of EngineConfig fields, got {type(data).__name__}"
        )
    return data


def gpus_from_proto(gpus: Iterable[pb.GpuInfo]) -> list[dict[str, Any]]:
    return [
        {
            "index": gpu.index,
            "uuid": gpu.uuid,
            "name": gpu.name,
            "memory_total_bytes": gpu.memory_total_bytes if gpu.HasField("memory_total_bytes") else None,
        }
        for gpu in gpus
    ]


def start_replica(replica: Replica) -> pb.StartReplica:
    """The command that starts `replica`: its revision's model and config, served under the deployment's
    name, which is the model name clients send to the gateway."""
    revision = replica.revision
    return pb.StartReplica(
        replica_id=replica.id,
        deployment=replica.deployment.name,
        revision=revision.number,
        model=revision.model,
        # A trial replica carries the optimizer's candidate config; every other one its revision's.
        engine_config_json=json.dumps(
            replica.engine_config if replica.engine_config is not None else revision.engine_config, sort_keys=True),
        served_model_name=replica.deployment.name,
    )


def replica_to_proto(replica: Replica) -> pb.Replica:
    return pb.Replica(
        id=replica.id,
        node=replica.node.name if replica.node is not None else "",
        state=state_to_proto(replica.state),
        url=replica.url or "",
        revision=replica.revision.number,
        error=replica.error or "",
        restarts=replica.restarts,
        role=replica.role.value,
    )


def deployment_to_proto(deployment: Deployment, replicas: list[Replica], fleet: Fleet,
                        quality_state: str = "ok") -> pb.Deployment:
    """`replicas`: the deployment's replicas that are not stopped (any revision); `quality_state`: the
    current revision's quality judgement."""
    current = deployment.current_revision
    assert current is not None, f"deployment {deployment.name!r} has no current revision"
    config = current.engine_config
    ready = [r for r in replicas if r.state == ReplicaState.READY and r.role == ReplicaRole.SERVE]
    return pb.Deployment(
        name=deployment.name,
        model=deployment.model,
        revision=current.number,
        desired_replicas=deployment.desired_replicas,
        ready_replicas=sum(1 for r in ready if r.revision_id == current.id),
        engine_config_json=json.dumps(config, sort_keys=True),
        weight_quantization=config.get("quantization") or "none",
        kv_cache_dtype=config.get("kv_cache_dtype") or "auto",
        replicas=[replica_to_proto(r) for r in replicas],
        stats=deployment_stats([r.id for r in ready], fleet),
        created_at=unix(deployment.created_at),
        updated_at=unix(deployment.updated_at),
        quality=quality_policy_to_proto(deployment),
        quality_state=quality_state,
        autoscaling=autoscale_policy_to_proto(deployment.autoscaling) if deployment.autoscaling else None,
        semantic_cache_threshold=deployment.semantic_cache_threshold,
    )


def autoscale_policy_to_proto(row: Autoscaling) -> pb.AutoscalePolicy:
    return pb.AutoscalePolicy(**{f: getattr(row, f) for f in STORED_FIELDS}, mode=row.mode.value)


def autoscale_policy_from_proto(msg: pb.AutoscalePolicy) -> AutoscalePolicy:
    """The policy a request asks for, checked (InvalidArgument says which value cannot work)."""
    try:
        mode = Mode(msg.mode or "on")
    except ValueError:
        raise InvalidArgument(f"autoscaling mode must be on, advisory or off, got {msg.mode!r}") from None
    return make_policy(min_replicas=msg.min_replicas, max_replicas=msg.max_replicas, target_queue=msg.target_queue,
                       target_kv_usage=msg.target_kv_usage if msg.HasField("target_kv_usage") else None,
                       scale_up_window_s=msg.scale_up_window_s, scale_down_window_s=msg.scale_down_window_s,
                       max_step=msg.max_step, mode=mode)


def autoscaling_to_proto(name: str, row: Autoscaling | None, last: Evaluation | None,
                         decisions: list[AutoscaleDecision]) -> pb.Autoscaling:
    out = pb.Autoscaling(deployment=name, policy=autoscale_policy_to_proto(row) if row is not None else None)
    if last is not None:
        out.last.CopyFrom(pb.AutoscaleEvaluation(current=last.current, desired=last.desired, signal=last.signal,
                                                 load=last.load, target=last.target, reason=last.reason))
    out.decisions.extend(
        pb.AutoscaleDecision(id=d.id, at=unix(d.at), mode=d.mode.value, current=d.current, desired=d.desired,
                             applied=d.applied, signal=d.signal, load=d.load, target=d.target, reason=d.reason)
        for d in decisions)
    return out


def quality_policy_to_proto(deployment: Deployment) -> pb.QualityPolicy:
    reference = reference_revision(deployment)
    return pb.QualityPolicy(sample_rate=deployment.quality_sample_rate, auto_rollback=deployment.quality_auto_rollback,
                            threshold=deployment.quality_threshold,
                            reference_revision=reference.number if reference is not None else 0)


def deployment_stats(ready_ids: list[int], fleet: Fleet) -> pb.DeploymentStats:
    """Aggregates over the ready replicas' latest engine statistics; a figure no replica reports is unset.

    Rates and queue depths add up across replicas; KV usage is a mean; latency percentiles are the worst
    replica's (percentiles cannot be combined exactly, and the slowest replica is what some clients see)."""
    samples = [t for t in (fleet.replica_telemetry(rid) for rid in ready_ids) if t is not None]
    stats = pb.DeploymentStats()
    rates = [t.requests_per_s for t in samples if t.requests_per_s is not None]
    if rates:
        stats.requests_per_s = sum(rates)
    present = {name: [getattr(t.stats, name) for t in samples if t.stats.HasField(name)]
               for name in ("ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tokens_per_s", "kv_cache_usage", "waiting")}
    for latency in ("ttft_p50_s", "ttft_p95_s", "tpot_p50_s"):
        if present[latency]:
            setattr(stats, latency, max(present[latency]))
    if present["tokens_per_s"]:
        stats.tokens_per_s = sum(present["tokens_per_s"])
    if present["kv_cache_usage"]:
        stats.kv_cache_usage = statistics.fmean(present["kv_cache_usage"])
    if present["waiting"]:
        stats.queue_depth = float(sum(present["waiting"]))
    return stats


def revision_to_proto(revision: Revision, current_id: int | None) -> pb.Revision:
    return pb.Revision(
        number=revision.number,
        model=revision.model,
        engine_config_json=json.dumps(revision.engine_config, sort_keys=True),
        created_at=unix(revision.created_at),
        created_by=revision.created_by,
        reason=revision.reason,
        current=revision.id == current_id,
    )


def node_to_proto(node: Node, replica_count: int, telemetry: NodeTelemetry | None) -> pb.Node:
    message = pb.Node(
        name=node.name,
        hostname=node.hostname,
        state=node.state.value,
        last_heartbeat_at=unix(node.last_heartbeat_at),
        engine_version=node.engine_version,
        max_replicas=node.max_replicas,
        replica_count=replica_count,
    )
    if telemetry is not None:
        message.gpus.extend(telemetry.sample.gpus)
        if telemetry.sample.HasField("host"):
            message.host.CopyFrom(telemetry.sample.host)
        message.source = telemetry.sample.source
    else:
        # No sample yet: the GPUs as registered, without readings (unset, never a made-up 0).
        for gpu in node.gpus:
            sample = message.gpus.add(index=gpu["index"], uuid=gpu["uuid"], name=gpu["name"])
            if gpu.get("memory_total_bytes") is not None:
                sample.memory_total_bytes = gpu["memory_total_bytes"]
    return message


def event_to_proto(event: Event) -> pb.Event:
    return pb.Event(
        id=event.id,
        at=unix(event.at),
        kind=event.kind,
        deployment=event.deployment_name or "",
        node=event.node_name or "",
        actor=event.actor,
        message=event.message,
        details_json=json.dumps(event.details or {}, sort_keys=True, default=str),
    )


def audit_to_proto(record: AuditRecord) -> pb.AuditEntry:
    return pb.AuditEntry(id=record.id, at=unix(record.at), actor=record.actor, peer=record.peer, rpc=record.rpc,
                         target=record.target, result=record.result, message=record.message)


def tenant_to_proto(tenant: Tenant) -> pb.Tenant:
    return pb.Tenant(
        name=tenant.name,
        rpm=tenant.rpm,
        tpm=tenant.tpm,
        monthly_tokens=tenant.monthly_tokens,
        created_at=unix(tenant.created_at),
        quality_opt_out=tenant.quality_opt_out,
        cache_sampled=tenant.cache_sampled,
    )


def usage_row_to_proto(row: dict[str, Any]) -> pb.UsageRow:
    return pb.UsageRow(
        deployment=row["deployment_name"],
        requests=row["requests"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_usd=row["cost_usd"],
    )


def interval_to_proto(value: tuple[float, float, float] | None) -> pb.Interval:
    return pb.Interval() if value is None else pb.Interval(mean=value[0], low=value[1], high=value[2])


def revision_quality_to_proto(summary: RevisionSummary, trend: list[float], current: bool) -> pb.RevisionQuality:
    return pb.RevisionQuality(
        revision=summary.revision, samples=summary.samples, pending=summary.pending, dropped=summary.dropped,
        state=summary.state.value, mean_logprob=interval_to_proto(summary.mean_logprob),
        top1=interval_to_proto(summary.top1),
        baseline_mean_logprob=interval_to_proto(summary.baseline_mean_logprob),
        baseline_top1=interval_to_proto(summary.baseline_top1),
        details_json=json.dumps(summary.details, sort_keys=True), trend=trend, current=current,
    )


def quality_sample_to_proto(sample: QualitySample, tenant: str | None) -> pb.QualitySample:
    scores = {name: value for name in ("mean_logprob", "top1", "baseline_mean_logprob", "baseline_top1")
              if (value := getattr(sample, name)) is not None}
    return pb.QualitySample(
        id=sample.id, revision=sample.revision, tenant=tenant or "", at=unix(sample.at), kind=sample.kind,
        request_json=json.dumps(sample.request, sort_keys=True), answer=sample.answer,
        status=sample.status.value, error=sample.error or "", **scores,
    )


def optimization_run_to_proto(run: OptimizationRun, report: dict[str, Any] | None) -> pb.OptimizationRun:
    """A run; `report` (services.optimizer.report) travels as JSON, None for listings."""
    return pb.OptimizationRun(
        id=run.id, deployment=run.deployment.name, state=run.state.value, goal=run.goal,
        created_at=run.created_at.timestamp(), finished_at=run.finished_at.timestamp() if run.finished_at else 0.0,
        summary=run.summary, report_json=json.dumps(report) if report is not None else "",
    )


def traffic_to_proto(found: dict[str, Any]) -> pb.TrafficSummary:
    """A traffic summary (services.traffic.summary); a statistic with no data stays unset."""
    message = pb.TrafficSummary(
        deployment=found["deployment"], since=found["since"].timestamp(), until=found["until"].timestamp(),
        requests=found["requests"], workload_error=found["workload_error"] or "",
        first_at=found["first_at"].timestamp() if found["first_at"] else 0.0,
        last_at=found["last_at"].timestamp() if found["last_at"] else 0.0,
        workload_json=json.dumps(found["workload"]) if found["workload"] is not None else "",
    )
    for key in ("request_rate", "shared_fraction", "workload_speedup"):
        if found[key] is not None:
            setattr(message, key, found[key])
    for key in ("prompt_tokens", "completion_tokens", "shared_prefix_tokens", "interarrival_s"):
        if found[key] is not None:
            getattr(message, key).CopyFrom(pb.TrafficStats(**found[key]))
    return message


def prompt_audit_to_proto(found: dict[str, Any]) -> pb.PromptAudit:
    """A prompt audit (services.prompts.audit); no price leaves usd_per_mtok and the dollar figures unset."""
    def saving(value: dict[str, float | None]) -> pb.PromptSavings:
        message = pb.PromptSavings(tokens_per_million=value["tokens_per_million"])
        if value["usd_per_million"] is not None:
            message.usd_per_million = value["usd_per_million"]
        return message

    message = pb.PromptAudit(
        deployment=found["deployment"], since=found["since"].timestamp(), until=found["until"].timestamp(),
        **{key: found[key] for key in ("requests", "prompt_tokens", "distinct_system_prompts",
                                       "system_prompt_requests", "mean_system_tokens", "target_system_tokens",
                                       "distinct_prefixes", "prefix_saved_tokens", "prefix_saved_fraction")},
        tenants=[pb.TenantPromptTokens(**t) for t in found["tenants"]],
        system_prompts=[pb.SystemPromptShare(**p) for p in found["system_prompts"]],
        prefixes=[pb.PrefixShare(**p) for p in found["prefixes"]],
        shorter_system_prompt=saving(found["shorter_system_prompt"]), prefix_cache=saving(found["prefix_cache"]),
        price_source=found["price_source"] or "",
    )
    if found["usd_per_mtok"] is not None:
        message.usd_per_mtok = found["usd_per_mtok"]
    return message
