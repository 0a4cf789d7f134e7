"""A scripted fleet for optimizer tests: a real control plane (gRPC, SQL, the job thread) and a scripted agent
that serves trial replicas and answers measurements from a small performance model of the configurations, so
every decision of a run is known in advance (tests/controlplane/test_server_optimizer.py, the dashboard's
optimization panel test)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for

SMALL_POOL = {"num_kv_blocks": 32, "max_model_len": 512}
FAST_RUN = {"repeats": 2, "techniques": ["max-num-batched-tokens", "kv-cache-size", "kv-int8", "awq"]}


def bench_result(config: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """What `llmctl bench --url` would report for a configuration on this made-up machine: a pool of 32
    blocks preempts and runs at 100 tok/s; a big enough pool runs 40% faster; int8 KV costs 3%."""
    blocks = config.get("num_kv_blocks") or 400
    speed = 100.0 * (1.4 if blocks >= 300 else 1.0) * (0.97 if config.get("kv_cache_dtype") == "int8" else 1.0)
    speed *= rng.uniform(0.99, 1.01)
    ms = {"mean": 900.0, "p50": 800.0, "p95": 1500.0, "p99": 1600.0}
    tpot = {"mean": 40.0, "p50": 38.0, "p95": 60.0, "p99": 70.0}
    return {"runs": [{
        "name": "url", "output_tokens_per_s": speed, "ttft_ms": ms, "tpot_ms": tpot, "itl_ms": tpot,
        "server": {"num_preemptions": 40 if blocks < 300 else 0, "model_bytes": 538_000_000,
                   "linear_weight_bytes": 428_000_000, "kv_cache_bytes": blocks * 16 * 46_080,
                   "kv_blocks_total": blocks, "peak_kv_usage": 1.0},
    }]}


def eval_result(config: dict[str, Any]) -> dict[str, Any]:
    """docs/quantization.md's SmolLM2 numbers: int8 KV is within 2%, awq is not."""
    reference = {"perplexity": 15.471, "kl_divergence": 0.0, "top1_agreement": 1.0, "accuracy": 0.567,
                 "linear_weight_bytes": 428_000_000, "kv_bytes_per_token": 46_080}
    if config.get("quantization") == "awq":
        candidate = {**reference, "perplexity": 17.664, "kl_divergence": 0.1223, "top1_agreement": 0.8111,
                     "accuracy": 0.542, "linear_weight_bytes": 115_000_000}
    else:
        candidate = {**reference, "perplexity": 15.495, "kl_divergence": 0.0006, "top1_agreement": 0.9851,
                     "kv_bytes_per_token": 12_240}
    return {"candidate": candidate, "reference": reference}


class FleetAgent:
    """A scripted agent that acts on every command at once: serves trial replicas, answers measurements."""

    def __init__(self, plane: Any, name: str = "a", *, max_replicas: int = 4, hold: bool = False,
                 broken_kv_dtype: str | None = None, failing_benches: int = 0) -> None:
        self.broken_kv_dtype = broken_kv_dtype
        self.failing_benches = failing_benches
        """The first this many benches fail (-1: every one), as when a bench child dies or its replica does."""
        """Replicas with this KV cache dtype crash on start (reported FAILED, as after their third try)."""
        self.configs: dict[int, dict[str, Any]] = {}
        self.stopped: list[int] = []
        self.cancelled: list[int] = []
        self.measured: list[int] = []
        self.hold = threading.Event()
        """While set, RunMeasurement commands are taken but not answered (a measurement in progress)."""
        if hold:
            self.hold.set()
        self.held: list[pb.RunMeasurement] = []
        self.rng = random.Random(7)
        self.lock = threading.Lock()
        self.agent = ScriptedAgent(plane, name, max_replicas=max_replicas, on_command=self._on_command)

    def join(self, replicas: list[pb.ReplicaStatus] | None = None) -> FleetAgent:
        self.agent.join(replicas)
        return self

    def _on_command(self, message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("kind")
        with self.lock:
            if kind == "start_replica":
                start = message.start_replica
                self.configs[start.replica_id] = json.loads(start.engine_config_json)
                if self.broken_kv_dtype is not None \
                        and self.configs[start.replica_id].get("kv_cache_dtype") == self.broken_kv_dtype:
                    self.agent.report(start.replica_id, pb.REPLICA_STATE_FAILED, deployment=start.deployment,
                                      revision=start.revision, error="engine crashed: out of memory", restarts=2)
                else:
                    self.agent.serve(start, url=f"http://trial:{9000 + start.replica_id}")
            elif kind == "stop_replica":
                self.stopped.append(message.stop_replica.replica_id)
                self.agent.report(message.stop_replica.replica_id, pb.REPLICA_STATE_STOPPED)
            elif kind == "cancel_measurement":
                self.cancelled.append(message.cancel_measurement.measurement_id)
            elif kind == "run_measurement":
                if self.hold.is_set():
                    self.held.append(message.run_measurement)
                else:
                    self.answer(message.run_measurement)

    def answer(self, run: pb.RunMeasurement) -> None:
        args = json.loads(run.args_json)
        if run.kind == "bench" and self.failing_benches:
            self.failing_benches -= 1
            self.measured.append(run.measurement_id)
            self.agent.send(pb.AgentMessage(measurement_result=pb.MeasurementResult(
                measurement_id=run.measurement_id, ok=False, wall_s=0.5,
                error="llmctl bench exited with code 2; last lines of its output:\nerror: connection refused")))
            return
        if run.kind == "bench":
            replica_id = int(args["url"].rsplit(":", 1)[1]) - 9000
            result = bench_result(self.configs[replica_id], self.rng)
        else:
            result = eval_result(args["engine_config"])
        self.measured.append(run.measurement_id)
        self.agent.send(pb.AgentMessage(measurement_result=pb.MeasurementResult(
            measurement_id=run.measurement_id, ok=True, result_json=json.dumps(result), wall_s=1.0)))

    def running(self) -> list[pb.ReplicaStatus]:
        """What a real agent would list in its Hello: every replica it was told to start and not to stop."""
        return [pb.ReplicaStatus(replica_id=rid, state=pb.REPLICA_STATE_READY, url=f"http://trial:{9000 + rid}")
                for rid in self.configs if rid not in self.stopped]

    def close(self) -> None:
        self.agent.close()


@contextmanager
def optimizing_fleet(tmp_path: Path, **agent: Any) -> Iterator[tuple[Any, Admin, FleetAgent]]:
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        fleet = FleetAgent(plane, **agent).join()
        try:
            admin.deploy("chat", **SMALL_POOL)
            wait_for(lambda: ready_replicas(admin, "chat") == 1, what="the serving replica")
            yield plane, admin, fleet
        finally:
            fleet.close()


def ready_replicas(admin: Admin, name: str) -> int:
    return admin.GetDeployment(pb.GetDeploymentRequest(name=name)).ready_replicas


def start(admin: Admin, goal: str = "throughput", **options: Any) -> pb.OptimizationRun:
    return admin.StartOptimization(pb.StartOptimizationRequest(
        deployment="chat", goal=goal, options_json=json.dumps({**FAST_RUN, **options})))


def finished(admin: Admin, run_id: int, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = admin.GetOptimization(pb.GetOptimizationRequest(id=run_id))
        return json.loads(run.report_json) if run.state != "running" else None

    return wait_for(done, timeout=timeout, what=f"optimization run {run_id} to end")
