"""Agent dataclasses -> wire messages (llmctl.v1), in one place.

A reading the hardware or the replica did not give (None) leaves the proto3 `optional` field unset, so the
control plane can tell "not reported" from a real 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from llmctl.agent.measurement import MeasurementOutcome
from llmctl.agent.replica_stats import STAT_FIELDS
from llmctl.agent.replicas import ReplicaState, ReplicaStatus
from llmctl.agent.telemetry import GpuReading, HostReading, TelemetryReading
from llmctl.controlplane.proto import llmctl_pb2 as pb

_SOURCES = {"nvml": pb.TELEMETRY_SOURCE_NVML, "host": pb.TELEMETRY_SOURCE_HOST}


class BadCommand(ValueError):
    """A control message the agent cannot carry out as sent (the reply is a FAILED status saying why)."""


def _present(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def replica_state_to_proto(state: ReplicaState) -> int:
    return pb.ReplicaState.Value(f"REPLICA_STATE_{state.value}")


def status_to_proto(status: ReplicaStatus) -> pb.ReplicaStatus:
    """The wire form of a supervisor status; the local pid means nothing to the control plane: dropped."""
    return pb.ReplicaStatus(
        replica_id=status.replica_id,
        deployment=status.deployment,
        revision=status.revision,
        state=replica_state_to_proto(status.state),
        url=status.url,
        error=status.error,
        restarts=status.restarts,
    )


def failed_status(replica_id: int, deployment: str, revision: int, error: str) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(replica_id=replica_id, deployment=deployment, revision=revision,
                            state=pb.REPLICA_STATE_FAILED, error=error)


def stopped_status(replica_id: int, deployment: str, revision: int, error: str) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(replica_id=replica_id, deployment=deployment, revision=revision,
                            state=pb.REPLICA_STATE_STOPPED, error=error)


def gpu_info_to_proto(gpus: Iterable[Mapping[str, Any]]) -> list[pb.GpuInfo]:
    return [
        pb.GpuInfo(**_present(index=int(g["index"]), uuid=str(g["uuid"]), name=str(g["name"]),
                              memory_total_bytes=g.get("memory_total_bytes")))
        for g in gpus
    ]


def gpu_to_proto(gpu: GpuReading) -> pb.GpuSample:
    processes = [pb.GpuProcess(**_present(pid=p.pid, used_memory_bytes=p.used_memory_bytes))
                 for p in gpu.processes]
    return pb.GpuSample(
        processes=processes,
        **_present(
            index=gpu.index, uuid=gpu.uuid, name=gpu.name,
            utilization_percent=gpu.utilization_percent,
            memory_used_bytes=gpu.memory_used_bytes,
            memory_total_bytes=gpu.memory_total_bytes,
            power_watts=gpu.power_watts,
            power_limit_watts=gpu.power_limit_watts,
            temperature_c=gpu.temperature_c,
            sm_clock_mhz=gpu.sm_clock_mhz,
        ),
    )


def host_to_proto(host: HostReading) -> pb.HostSample:
    return pb.HostSample(cpu_percent=host.cpu_percent, memory_used_bytes=host.memory_used_bytes,
                         memory_total_bytes=host.memory_total_bytes)


def replica_stats_to_proto(replica_id: int, stats: Mapping[str, Any]) -> pb.ReplicaStats:
    return pb.ReplicaStats(replica_id=replica_id, **_present(**{f: stats.get(f) for f in STAT_FIELDS}))


def telemetry_to_proto(reading: TelemetryReading,
                       replica_stats: Mapping[int, Mapping[str, Any]] | None = None) -> pb.TelemetrySample:
    """One TelemetrySample: the node's readings plus the engine statistics of each replica scraped."""
    return pb.TelemetrySample(
        sent_at=reading.at,
        source=_SOURCES[reading.source],
        gpus=[gpu_to_proto(g) for g in reading.gpus],
        host=host_to_proto(reading.host) if reading.host is not None else None,
        replicas=[replica_stats_to_proto(rid, stats) for rid, stats in sorted((replica_stats or {}).items())],
    )


def parse_start(msg: pb.StartReplica) -> dict[str, Any]:
    """ReplicaSupervisor.start keyword arguments from a StartReplica; BadCommand says what is wrong."""
    if msg.replica_id <= 0:
        raise BadCommand(f"StartReplica needs a positive replica_id, got {msg.replica_id}")
    if not msg.deployment:
        raise BadCommand(f"StartReplica for replica {msg.replica_id} has no deployment name")
    if not msg.model:
        raise BadCommand(f"StartReplica for replica {msg.replica_id} has no model reference")
    try:
        engine_config = json.loads(msg.engine_config_json or "{}")
    except json.JSONDecodeError as exc:
        raise BadCommand(f"engine_config_json of replica {msg.replica_id} is not valid JSON: {exc}") from exc
    if not isinstance(engine_config, dict):
        raise BadCommand(f"engine_config_json of replica {msg.replica_id} must be a JSON object of "
                         f"EngineConfig fields, got {type(engine_config).__name__}")
    return dict(
        deployment=msg.deployment,
        revision=msg.revision,
        model=msg.model,
        engine_config=engine_config,
        # The gateway routes by deployment name, so that is what a replica answers to unless told otherwise.
        served_model_name=msg.served_model_name or msg.deployment,
    )


def parse_measurement_args(msg: pb.RunMeasurement) -> Any:
    """RunMeasurement's args_json, decoded (the runner checks what is in it); BadCommand if it is not JSON."""
    try:
        return json.loads(msg.args_json or "{}")
    except json.JSONDecodeError as exc:
        raise BadCommand(f"args_json of measurement {msg.measurement_id} is not valid JSON: {exc}") from exc


def measurement_to_proto(outcome: MeasurementOutcome) -> pb.MeasurementResult:
    return pb.MeasurementResult(
        measurement_id=outcome.measurement_id, ok=outcome.ok, error=outcome.error or "", wall_s=outcome.wall_s,
        result_json=json.dumps(outcome.result) if outcome.result is not None else "",
    )
