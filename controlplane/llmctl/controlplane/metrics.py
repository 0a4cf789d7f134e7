"""Control-plane Prometheus metrics, on the same registry as the gateway's (one /metrics for both).

Node GPU gauges come from the agents' latest telemetry at scrape time, and only for readings a GPU
reported: an unsupported reading has no series rather than a made-up 0. Node health and deployment
replica counts come from the reconciler's last pass, so a scrape never queries SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from llmctl.controlplane.fleet import Fleet

# (metric name, GpuSample field, help)
GPU_GAUGES = (
    ("llmctl_node_gpu_utilization_percent", "utilization_percent", "GPU busy time lately, 0-100."),
    ("llmctl_node_gpu_memory_used_bytes", "memory_used_bytes", "GPU memory in use."),
    ("llmctl_node_gpu_memory_total_bytes", "memory_total_bytes", "GPU memory in total."),
    ("llmctl_node_gpu_power_watts", "power_watts", "GPU power draw."),
    ("llmctl_node_gpu_temperature_celsius", "temperature_c", "GPU temperature."),
)
GPU_LABELS = ["node", "gpu", "uuid", "name"]


@dataclass(frozen=True)
class Snapshot:
    """What the reconciler saw in its last pass."""

    nodes: tuple[tuple[str, str], ...] = ()
    """(node name, state)"""
    deployments: tuple[tuple[str, int, int], ...] = ()
    """(deployment name, desired replicas, ready replicas of the current revision)"""


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry, fleet: Fleet) -> None:
        self.snapshot = Snapshot()
        self.autoscaler: Any = None
        """The AutoscaleJob, whose last evaluations are exported (set once it exists)."""
        self.actions = Counter(
            "llmctl_reconcile_actions",
            "Decisions the reconciler carried out: start, stop, lost, give_up, rollout_failed, rollback, "
            "unschedulable.",
            ["action"], registry=registry,
        )
        self.pass_seconds = Histogram(
            "llmctl_reconcile_pass_seconds", "Time one reconcile pass took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry,
        )
        registry.register(_Collector(self, fleet))


class _Collector:
    def __init__(self, metrics: ControlPlaneMetrics, fleet: Fleet) -> None:
        self._metrics, self._fleet = metrics, fleet

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.snapshot
        healthy = GaugeMetricFamily("llmctl_node_healthy", "1 while the node sends heartbeats and takes work",
                                    labels=["node", "state"])
        for name, state in snapshot.nodes:
            healthy.add_metric([name, state], 1.0 if state == "healthy" else 0.0)
        yield healthy
        connected = GaugeMetricFamily("llmctl_node_connected",
                                      "1 while the node's agent holds its stream open.", labels=["node"])
        for name, _state in snapshot.nodes:
            connected.add_metric([name], 1.0 if self._fleet.session(name) is not None else 0.0)
        yield connected
        families = {field: GaugeMetricFamily(name, text, labels=GPU_LABELS)
                    for name, field, text in GPU_GAUGES}
        for node, telemetry in sorted(self._fleet.connected_telemetry().items()):
            for gpu in telemetry.sample.gpus:
                labels = [node, str(gpu.index), gpu.uuid, gpu.name]
                for field, family in families.items():
                    if gpu.HasField(field):
                        family.add_metric(labels, float(getattr(gpu, field)))
        yield from families.values()
        desired = GaugeMetricFamily("llmctl_deployment_replicas_desired",
                                    "Replicas the deployment should run.", labels=["deployment"])
        ready = GaugeMetricFamily("llmctl_deployment_replicas_ready",
                                  "READY replicas of the deployment's current revision.",
                                  labels=["deployment"])
        for name, want, have in snapshot.deployments:
            desired.add_metric([name], want)
            ready.add_metric([name], have)
        yield desired
        yield ready
        yield from _autoscaler_families(self._metrics.autoscaler)


def _autoscaler_families(autoscaler: Any) -> Iterator[Metric]:
    """Per autoscaled deployment: the count the policy wants now, and the load and target of the signal that
    drove it (the reconciler's llmctl_deployment_replicas_desired / _ready give what is asked and what runs)."""
    wanted = GaugeMetricFamily("llmctl_autoscaler_recommended_replicas",
                               "Replicas the autoscaling policy wants now (applied unless the mode is advisory).",
                               labels=["deployment", "mode", "signal"])
    load = GaugeMetricFamily("llmctl_autoscaler_signal_load",
                             "The driving signal's load: waiting requests, or KV usage summed over replicas.",
                             labels=["deployment", "signal"])
    target = GaugeMetricFamily("llmctl_autoscaler_signal_target", "The driving signal's target per replica.",
                               labels=["deployment", "signal"])
    evaluations = autoscaler.evaluations if autoscaler is not None else {}
    for name, e in sorted(evaluations.items()):
        wanted.add_metric([name, e.mode, e.signal], e.desired)
        if e.load is not None and e.target is not None:
            load.add_metric([name, e.signal], e.load)
            target.add_metric([name, e.signal], e.target)
    yield wanted
    yield load
    yield target
