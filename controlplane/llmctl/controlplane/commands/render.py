"""AdminService messages as plain dicts (the stable keys of `--output json`) and as table cells.

The JSON shape is a contract with scripts: keys are snake_case, times are unix seconds, a reading the
control plane does not have is null (never a made-up 0), enums are their short upper-case names.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _enum_name(value: int, enum: Any, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix)


def _json_object(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {"_unparsed": raw}
    return data if isinstance(data, dict) else {"_unparsed": raw}


def replica_dict(replica: Any) -> dict[str, Any]:
    from llmctl.controlplane.proto import llmctl_pb2 as pb

    return {
        "id": replica.id,
        "node": replica.node or None,
        "state": _enum_name(replica.state, pb.ReplicaState, "REPLICA_STATE_"),
        "url": replica.url or None,
        "revision": replica.revision,
        "error": replica.error or None,
        "restarts": replica.restarts,
        "role": replica.role or "serve",
    }


STAT_FIELDS = ("requests_per_s", "ttft_p95_s", "tokens_per_s", "kv_cache_usage", "queue_depth")


def deployment_dict(deployment: Any) -> dict[str, Any]:
    return {
        "name": deployment.name,
        "model": deployment.model,
        "revision": deployment.revision,
        "desired_replicas": deployment.desired_replicas,
        "ready_replicas": deployment.ready_replicas,
        "engine_config": _json_object(deployment.engine_config_json),
        "weight_quantization": deployment.weight_quantization or None,
        "kv_cache_dtype": deployment.kv_cache_dtype or None,
        "replicas": [replica_dict(r) for r in deployment.replicas],
        "stats": {field: _optional(deployment.stats, field) for field in STAT_FIELDS},
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
        "quality": quality_policy_dict(deployment.quality),
        "quality_state": deployment.quality_state or "ok",
        "autoscaling": autoscale_policy_dict(deployment.autoscaling) if deployment.HasField("autoscaling") else None,
    }


def autoscale_policy_dict(policy: Any) -> dict[str, Any]:
    return {"min_replicas": policy.min_replicas, "max_replicas": policy.max_replicas,
            "target_queue": policy.target_queue,
            "target_kv_usage": policy.target_kv_usage if policy.HasField("target_kv_usage") else None,
            "scale_up_window_s": policy.scale_up_window_s, "scale_down_window_s": policy.scale_down_window_s,
            "max_step": policy.max_step, "mode": policy.mode}


def autoscale_policy_text(policy: dict[str, Any] | None) -> str:
    if policy is None:
        return "autoscaling off (replicas set by hand)"
    kv = f", KV usage {policy['target_kv_usage']:g}" if policy["target_kv_usage"] is not None else ""
    return (f"autoscaling {policy['mode']}: {policy['min_replicas']}-{policy['max_replicas']} replicas, target queue "
            f"{policy['target_queue']:g}{kv}, up after {policy['scale_up_window_s']:g}s, down after "
            f"{policy['scale_down_window_s']:g}s, at most {policy['max_step']} at a time")


def quality_policy_dict(policy: Any) -> dict[str, Any]:
    return {
        "sample_rate": policy.sample_rate,
        "auto_rollback": policy.auto_rollback,
        "threshold": policy.threshold,
        "reference_revision": policy.reference_revision or None,
    }


def quality_policy_text(policy: dict[str, Any]) -> str:
    if not policy["sample_rate"]:
        return "quality sampling off"
    reference = policy["reference_revision"]
    return (f"quality sampling {100 * policy['sample_rate']:g}% of answers, judged against "
            + (f"revision {reference}" if reference else "no reference (no unquantized revision)")
            + f", tolerance {policy['threshold']:g} nats/token, auto-rollback "
            + ("on" if policy["auto_rollback"] else "off"))


def revision_dict(revision: Any) -> dict[str, Any]:
    return {
        "number": revision.number,
        "model": revision.model,
        "engine_config": _json_object(revision.engine_config_json),
        "created_at": revision.created_at,
        "created_by": revision.created_by,
        "reason": revision.reason,
        "current": revision.current,
    }


GPU_FIELDS = (
    "utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_watts",
    "power_limit_watts",
    "temperature_c",
    "sm_clock_mhz",
)


def node_dict(node: Any) -> dict[str, Any]:
    from llmctl.controlplane.proto import llmctl_pb2 as pb

    host = None
    if node.HasField("host"):
        host = {
            "cpu_percent": node.host.cpu_percent,
            "memory_used_bytes": node.host.memory_used_bytes,
            "memory_total_bytes": node.host.memory_total_bytes,
        }
    return {
        "name": node.name,
        "hostname": node.hostname,
        "state": node.state,
        "last_heartbeat_at": node.last_heartbeat_at or None,
        "engine_version": node.engine_version,
        "max_replicas": node.max_replicas,
        "replica_count": node.replica_count,
        "source": _enum_name(node.source, pb.TelemetrySource, "TELEMETRY_SOURCE_"),
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name} | {f: _optional(g, f) for f in GPU_FIELDS}
            for g in node.gpus
        ],
        "host": host,
    }


def event_dict(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at,
        "kind": event.kind,
        "deployment": event.deployment or None,
        "node": event.node or None,
        "actor": event.actor,
        "message": event.message,
        "details": _json_object(event.details_json),
    }


def tenant_dict(tenant: Any) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "rpm": tenant.rpm,
        "tpm": tenant.tpm,
        "monthly_tokens": tenant.monthly_tokens,
        "quality_opt_out": tenant.quality_opt_out,
        "cache_sampled": tenant.cache_sampled,
        "created_at": tenant.created_at,
    }


def usage_dict(row: Any) -> dict[str, Any]:
    return {
        "deployment": row.deployment,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost_usd": row.cost_usd,
    }


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Each key whose value differs between two engine configs, sorted; an absent key reads as null."""
    return [
        {"key": key, "from": old.get(key), "to": new.get(key)}
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


# Table cells


def when(at: float | None) -> str | None:
    if not at:
        return None
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def ago(at: float | None) -> str | None:
    if not at:
        return None
    seconds = max(0.0, time.time() - at)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def number(value: float | None, digits: int = 2, unit: str = "") -> str | None:
    return None if value is None else f"{value:.{digits}f}{unit}"


def size(value: int | None) -> str | None:
    if value is None:
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return None


def limit(value: int) -> str:
    return "unlimited" if value == 0 else f"{value:,}"


def value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value
