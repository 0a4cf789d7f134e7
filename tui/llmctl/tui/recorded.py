"""A feed that replays recorded AdminService answers: the same messages as the live feed, no network.

Snapshot tests, the 50-node responsiveness test and the docs' screen capture use it with
`demo_recording()`, a deterministic fleet (fixed times and values), so the screens are byte-stable; `chat` has an
optimization run under way (recorded_optimization.py), whose later stages a test can play.
Actions are refused with a clear error: there is no control plane behind a recording.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from textual.app import App

from llmctl.controlplane.errors import NotFound, Unavailable
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.messages import (
    Connection,
    ConnectionChanged,
    EventsArrived,
    FleetUpdated,
    Link,
    OptimizationUpdated,
    QualityUpdated,
)
from llmctl.tui.recorded_optimization import demo_optimization

T = TypeVar("T")
GIB = 1 << 30
START = 1_700_000_000.0
"""Recorded clock: 2023-11-14 22:13:20 UTC."""
RUN_STARTED = START - 150
"""When `chat`'s optimization run started (the recording ends 325 s into it)."""
OPTIMIZATION_STAGE = 3


@dataclass
class Frame:
    """One poll's answers."""

    at: float
    nodes: list[pb.Node]
    deployments: list[pb.Deployment]


@dataclass
class Recording:
    frames: list[Frame]
    events: list[pb.Event] = field(default_factory=list)
    revisions: dict[str, list[pb.Revision]] = field(default_factory=dict)
    quality: dict[str, pb.QualityReport] = field(default_factory=dict)
    optimizations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest optimization run's report per deployment (absent: the deployment has none)."""


class RecordedAdmin:
    """Read-only AdminService answers from a recording (what RecordedFeed.call hands to a request)."""

    def __init__(self, recording: Recording) -> None:
        self._recording = recording

    def list_nodes(self) -> list[pb.Node]:
        return list(self._recording.frames[-1].nodes)

    def list_deployments(self) -> list[pb.Deployment]:
        return list(self._recording.frames[-1].deployments)

    def list_revisions(self, name: str) -> list[pb.Revision]:
        if name not in self._recording.revisions:
            raise NotFound(f"deployment {name!r} not found")
        return list(self._recording.revisions[name])

    def get_quality(self, name: str) -> pb.QualityReport:
        if name not in self._recording.quality:
            raise NotFound(f"deployment {name!r} not found")
        return self._recording.quality[name]

    def get_optimization(self, *, run_id: int = 0, deployment: str = "") -> pb.OptimizationRun:
        report = self._recording.optimizations.get(deployment)
        if run_id or report is None:
            raise NotFound(f"deployment {deployment} has no optimization runs; start one with `llmctl optimize "
                           f"{deployment} --goal throughput`")
        return pb.OptimizationRun(id=report["id"], deployment=deployment, state=report["state"],
                                  goal=report["goal"], created_at=report["created_at"],
                                  finished_at=report["finished_at"] or 0.0, summary=report["summary"],
                                  report_json=json.dumps(report))

    def list_events(self, *, after_id: int = 0, deployment: str | None = None,
                    limit: int = 0) -> list[pb.Event]:
        return [e for e in self._recording.events
                if e.id > after_id and (not deployment or e.deployment == deployment)]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable(f"this dashboard replays a recording; {name} needs a live control plane "
                              "(run `llmctl dashboard --control-plane HOST:PORT`)")

        return refuse


class RecordedFeed:
    def __init__(self, recording: Recording, address: str = "recording") -> None:
        self.address = address
        self.recording = recording
        self._app: App[Any] | None = None
        self._following: Counter[str] = Counter()

    def start(self, app: App[Any]) -> None:
        self._app = app
        for frame in self.recording.frames:
            app.post_message(FleetUpdated(frame.nodes, frame.deployments, frame.at))
        if self.recording.events:
            app.post_message(EventsArrived(self.recording.events))

    def stop(self) -> None:
        self._app = None

    def applied(self) -> None:
        pass

    def call(self, request: Callable[[Any], T]) -> T:
        return request(RecordedAdmin(self.recording))

    def follow(self, name: str) -> None:
        self._following[name] += 1
        if self._app is not None:  # as the live feed does: the reports at once, then with every poll
            self._post_followed(name)

    def unfollow(self, name: str) -> None:
        self._following[name] -= 1
        if self._following[name] <= 0:
            del self._following[name]

    def play(self, frame: Frame) -> None:
        """One more poll's answers, as if the control plane had just been asked (change the recording's
        quality reports or optimization runs first, and this poll brings the change)."""
        assert self._app is not None, "start() first"
        self.recording.frames.append(frame)
        for name in sorted(self._following):
            self._post_followed(name)
        self._app.post_message(FleetUpdated(frame.nodes, frame.deployments, frame.at))

    def _post_followed(self, name: str) -> None:
        assert self._app is not None
        self._app.post_message(self._quality(name))
        self._app.post_message(self._optimization(name))

    def _quality(self, name: str) -> QualityUpdated:
        at = self.recording.frames[-1].at
        try:
            return QualityUpdated(name, RecordedAdmin(self.recording).get_quality(name), at)
        except NotFound as e:
            return QualityUpdated(name, None, at, e.message)

    def _optimization(self, name: str) -> OptimizationUpdated:
        at = self.recording.frames[-1].at
        try:
            run = RecordedAdmin(self.recording).get_optimization(deployment=name)
        except NotFound:
            return OptimizationUpdated(name, None, at)
        return OptimizationUpdated(name, json.loads(run.report_json), at)

    def lose_connection(self, detail: str) -> None:
        assert self._app is not None, "start() first"
        self._app.post_message(ConnectionChanged(Connection(Link.DISCONNECTED, self.address, detail)))


# -- a deterministic demo fleet ----------------------------------------------------------------------------

MODELS = ("smollm2-135m", "llama-3.1-8b-instruct", "qwen2.5-7b", "mistral-7b-v0.3")
GPU_MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA L4")


def _wave(i: int, period: int, low: float, high: float) -> float:
    """A deterministic triangle wave (no floating-point trigonometry: the same digits on every machine)."""
    phase = i % period
    rise = phase if phase <= period // 2 else period - phase
    return low + (high - low) * rise / (period // 2)


def demo_node(index: int, frame: int, *, deployments: int) -> pb.Node:
    name = f"gpu-node-{index:02d}"
    node = pb.Node(name=name, hostname=f"{name}.lab", engine_version="0.1.0", max_replicas=4,
                   last_heartbeat_at=START + 5 * frame, source=pb.TELEMETRY_SOURCE_NVML)
    node.state = "unhealthy" if index == 2 else "draining" if index == 3 else "healthy"
    node.replica_count = 0 if index in (2, 3) else 1 + index % 3
    if index == 1:  # no NVML on this node: host readings only, and N/A for every GPU column
        node.source = pb.TELEMETRY_SOURCE_HOST
        node.host.CopyFrom(pb.HostSample(cpu_percent=12.5, memory_used_bytes=9 * GIB,
                                         memory_total_bytes=64 * GIB))
        return node
    gpu_model = GPU_MODELS[index % len(GPU_MODELS)]
    total = {0: 80, 1: 40, 2: 24}[index % len(GPU_MODELS)] * GIB
    for g in range(2 if index % 4 == 0 else 1):
        gpu = node.gpus.add(index=g, uuid=f"GPU-{index:02d}{g}", name=gpu_model, memory_total_bytes=total)
        if index == 2:
            continue  # unhealthy: registered GPUs, but no readings since it went quiet
        gpu.utilization_percent = _wave(frame + 3 * index + g, 12, 20 + g * 10, 95)
        gpu.memory_used_bytes = int(total * (0.35 + 0.05 * ((index + g) % 5)))
        gpu.temperature_c = 50 + (index * 7 + g * 3) % 30
        if index % 5 != 4:  # this GPU model does not report power: N/A, never a made-up 0
            gpu.power_watts = 120 + (index * 37 + frame) % 200
            gpu.power_limit_watts = 350
    return node


def demo_deployment(index: int, frame: int, nodes: int) -> pb.Deployment:
    name = ("chat", "code", "embed", "summarize")[index] if index < 4 else f"svc-{index:02d}"
    model = MODELS[index % len(MODELS)]
    quant = ("none", "awq", "int8", "none")[index % 4]
    kv = ("auto", "int8", "auto", "fp8")[index % 4]
    revision = 1 + index % 3
    config = {"model": model, "quantization": None if quant == "none" else quant, "kv_cache_dtype": kv,
              "max_num_seqs": 64, "block_size": 16}
    desired = 1 + index % 2
    serving = index % 4 != 2  # every fourth one is still starting: no stats yet
    deployment = pb.Deployment(name=name, model=model, revision=revision, desired_replicas=desired,
                               ready_replicas=desired if serving else 0,
                               engine_config_json=json.dumps(config, sort_keys=True),
                               weight_quantization=quant, kv_cache_dtype=kv,
                               created_at=START - 86_400, updated_at=START - 3_600)
    # Sampling while serving, judged against revision 1 (unquantized); the awq revisions drift below it.
    rate = (0.05 if index == 1 else 0.01) if serving else 0.0
    deployment.quality.CopyFrom(pb.QualityPolicy(sample_rate=rate, auto_rollback=index % 4 == 0, threshold=0.1,
                                                 reference_revision=1 if serving else 0))
    deployment.quality_state = demo_quality_state(index, revision) if serving else "ok"
    for r in range(desired + (1 if serving else 0)):
        scorer = r == desired  # the reference revision's SCORE replica: never routed
        node = f"gpu-node-{(index + r * 4) % nodes:02d}" if nodes else ""
        replica = deployment.replicas.add(id=100 * (index + 1) + r, node=node,
                                          revision=1 if scorer else revision, restarts=0,
                                          role="score" if scorer else "serve")
        if serving:
            replica.state = pb.REPLICA_STATE_READY
            replica.url = f"http://10.0.0.{(index + r) % 250 + 1}:{9000 + r}"
        else:
            replica.state = pb.REPLICA_STATE_STARTING
    if index == 0 and nodes:  # chat's optimization run measures its current best on a TRIAL replica
        deployment.replicas.add(id=503, node="gpu-node-00", revision=1, restarts=0, role="trial",
                                state=pb.REPLICA_STATE_READY, url="http://10.0.0.1:9100")
    if serving:
        stats = deployment.stats
        stats.requests_per_s = _wave(frame + index, 10, 1, 12)
        stats.tokens_per_s = _wave(frame + 2 * index, 16, 80, 900)
        stats.ttft_p95_s = _wave(frame + index, 8, 0.08, 0.4)
        stats.ttft_p50_s = stats.ttft_p95_s * 0.45
        stats.tpot_p50_s = _wave(frame + 3 * index, 12, 0.02, 0.06)
        stats.kv_cache_usage = _wave(frame, 20, 0.1, 0.7)
        stats.queue_depth = float(int(_wave(frame + index, 6, 0, 8)))
    return deployment


def demo_quality_state(index: int, revision: int) -> str:
    """Revision 1 is the reference (ok); of the later ones, some are degraded and some on watch."""
    if revision == 1:
        return "ok"
    return "degraded" if index % 8 == 1 else "watch" if index % 8 == 5 else "ok"


TREND_LEVEL = {"ok": 0.004, "watch": -0.07, "degraded": -0.21}
"""Mean served-minus-reference log-likelihood per token (nats) of a revision in that state."""


def _noise(i: int, seed: int) -> float:
    """Deterministic noise in [-1, 1] (integer arithmetic: the same digits on every machine)."""
    return (i * i * 7919 + i * 131 + seed * 104_729) % 201 / 100 - 1.0


def _interval(mean: float, half: float) -> pb.Interval:
    return pb.Interval(mean=round(mean, 4), low=round(mean - half, 4), high=round(mean + half, 4))


def demo_revision_quality(revision: int, state: str, points: int, *, current: bool,
                          threshold: float) -> pb.RevisionQuality:
    trend = [round(TREND_LEVEL[state] + 0.04 * _noise(i, revision), 4) for i in range(points)]
    change = statistics.median(trend)
    baseline, baseline_top1 = -1.12, 0.78
    summary = (f"median change over {points} samples: log-likelihood {change:+.3f} nats/token (tolerance "
               f"{threshold:g}), top-1 {change * 0.4:+.3f}")
    return pb.RevisionQuality(
        revision=revision, samples=points if current else 140, pending=2 if current else 0, dropped=0,
        state=state, mean_logprob=_interval(baseline + statistics.fmean(trend), 0.03),
        top1=_interval(baseline_top1 + 0.4 * change, 0.02), baseline_mean_logprob=_interval(baseline, 0.03),
        baseline_top1=_interval(baseline_top1, 0.02),
        details_json=json.dumps({"samples": points, "median_logprob_change": change, "summary": summary}),
        trend=trend, current=current)


def demo_quality(deployment: pb.Deployment) -> pb.QualityReport:
    """What GetQuality answers for a demo deployment: its earlier revisions scored while they served
    (100 points, the most the trend holds) and the current one's latest samples."""
    report = pb.QualityReport(deployment=deployment.name, policy=deployment.quality)
    if deployment.quality.sample_rate > 0:
        for number in range(1, deployment.revision + 1):
            current = number == deployment.revision
            state = deployment.quality_state if current else "ok"
            report.revisions.append(demo_revision_quality(number, state, 64 if current else 100, current=current,
                                                          threshold=deployment.quality.threshold))
    return report


def demo_revisions(deployment: pb.Deployment) -> list[pb.Revision]:
    current = json.loads(deployment.engine_config_json)
    found = []
    for number in range(1, deployment.revision + 1):
        config = dict(current) if number == deployment.revision else {
            **current, "max_num_seqs": 32 * number, "kv_cache_dtype": "auto", "quantization": None}
        found.append(pb.Revision(number=number, model=deployment.model,
                                 engine_config_json=json.dumps(config, sort_keys=True),
                                 created_at=START - 86_400 + 3_600 * number, created_by="admin",
                                 reason="deploy", current=number == deployment.revision))
    return found


def demo_events(deployments: list[pb.Deployment], nodes: int) -> list[pb.Event]:
    events: list[pb.Event] = []

    def add(kind: str, message: str, *, deployment: str = "", node: str = "") -> None:
        events.append(pb.Event(id=len(events) + 1, at=START - 600 + 20 * len(events), kind=kind,
                               deployment=deployment, node=node, actor="control-plane", message=message,
                               details_json="{}"))

    for i in range(min(nodes, 4)):
        add("node.registered", f"node gpu-node-{i:02d} joined", node=f"gpu-node-{i:02d}")
    for d in deployments:
        add("deployment.deployed", f"{d.name}: revision {d.revision} of {d.model}", deployment=d.name)
        add("replica.created", f"{d.name}: replica {d.replicas[0].id} placed", deployment=d.name)
        if d.ready_replicas:
            add("rollout.completed", f"{d.name}: revision {d.revision} ready", deployment=d.name)
        if d.quality_state in ("watch", "degraded"):
            add(f"quality.{d.quality_state}", f"quality of {d.name} revision {d.revision}: ok -> "
                f"{d.quality_state}", deployment=d.name)
    if nodes > 2:
        add("node.unhealthy", "node gpu-node-02 missed its heartbeats", node="gpu-node-02")
    if nodes > 3:
        add("node.drained", "node gpu-node-03 is draining", node="gpu-node-03")
    return events


def demo_frame(frame: int, *, nodes: int, deployments: int) -> Frame:
    return Frame(at=START + 5 * frame,
                 nodes=[demo_node(i, frame, deployments=deployments) for i in range(nodes)],
                 deployments=[demo_deployment(i, frame, nodes) for i in range(deployments)])


def demo_recording(nodes: int = 5, deployments: int = 4, frames: int = 36) -> Recording:
    """`frames` polls 5 s apart (three minutes of history) of a fleet with a healthy, a host-only, an
    unhealthy and a draining node, and deployments serving, quantized, and still starting; each serving
    one samples answers for quality, `code`'s current (awq) revision is degraded, and `chat` is being
    optimized (its run at OPTIMIZATION_STAGE: growing the KV pool kept, AWQ's quality eval under way)."""
    played = [demo_frame(f, nodes=nodes, deployments=deployments) for f in range(frames)]
    last = played[-1].deployments
    return Recording(frames=played, events=demo_events(last, nodes),
                     revisions={d.name: demo_revisions(d) for d in last},
                     quality={d.name: demo_quality(d) for d in last},
                     optimizations={"chat": demo_optimization("chat", OPTIMIZATION_STAGE, created_at=RUN_STARTED)})
