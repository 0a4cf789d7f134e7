"""The optimizer through a real control plane (gRPC, SQL, the job thread) and a scripted agent that serves
trial replicas and answers measurements message by message, as the agent daemon does. Speeds and quality
come from a small performance model of the configurations, so every decision is known in advance; the real
engine and SmolLM2 run the same loop in tests/e2e/test_optimize.py."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

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

    def __init__(self, plane: Any, name: str = "a", *, max_replicas: int = 4, hold: bool = False) -> None:
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
            wait_for(lambda: _ready(admin, "chat") == 1, what="the serving replica")
            yield plane, admin, fleet
        finally:
            fleet.close()


def _ready(admin: Admin, name: str) -> int:
    return admin.GetDeployment(pb.GetDeploymentRequest(name=name)).ready_replicas


def start(admin: Admin, goal: str = "throughput", **options: Any) -> pb.OptimizationRun:
    return admin.StartOptimization(pb.StartOptimizationRequest(
        deployment="chat", goal=goal, options_json=json.dumps({**FAST_RUN, **options})))


def finished(admin: Admin, run_id: int, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = admin.GetOptimization(pb.GetOptimizationRequest(id=run_id))
        return json.loads(run.report_json) if run.state != "running" else None

    return wait_for(done, timeout=timeout, what=f"optimization run {run_id} to end")


def test_a_run_keeps_the_gain_rejects_noise_and_quality_loss_and_rolls_out_the_result(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path) as (plane, admin, fleet):
        run = start(admin)
        assert run.state == "running"
        report = finished(admin, run.id)
        steps = {s["technique"]: s for s in report["steps"]}

        assert report["state"] == "succeeded", report["summary"]
        assert report["bottleneck"]["name"] == "kv-memory"
        assert steps["baseline"]["metrics"]["preemptions"] == 40
        assert steps["kv-cache-size"]["state"] == "kept"
        assert steps["kv-cache-size"]["gain"]["low"] > 0.05
        assert steps["max-num-batched-tokens"]["state"] == "rejected"
        assert "no gain beyond noise" in steps["max-num-batched-tokens"]["reason"]
        assert steps["kv-int8"]["state"] == "rejected" and "no gain beyond noise" in steps["kv-int8"]["reason"]
        assert steps["kv-int8"]["quality"]["top1_agreement"]["drop"] == pytest.approx(0.0149, abs=1e-4)
        awq = steps["awq"]
        assert awq["state"] == "rejected" and "quality" in awq["reason"] and "perplexity" in awq["reason"]
        assert awq["quality"]["perplexity"]["drop"] == pytest.approx(17.664 / 15.471 - 1)
        assert not [m for m in awq["measurements"] if m["kind"] == "bench"], "quality fails first: no bench"

        # Interleaved A B A B A per benchmarked step, one measurement at a time.
        arms = [m["arm"] for m in steps["kv-cache-size"]["measurements"]]
        assert arms == ["A", "B", "A", "B", "A"]
        # The kept change became revision 2, rolled out by the normal rollout.
        assert report["result_revision"] == 2
        revisions = admin.ListRevisions(pb.ListRevisionsRequest(name="chat")).revisions
        assert [(r.number, r.created_by, r.current) for r in revisions] == [(1, "admin", False),
                                                                            (2, "optimizer", True)]
        new_config = json.loads(revisions[1].engine_config_json)
        assert new_config["num_kv_blocks"] == steps["kv-cache-size"]["change"]["num_kv_blocks"] >= 300
        assert new_config["kv_cache_dtype"] == "auto" and new_config.get("quantization") is None
        wait_for(lambda: _serving_revision(admin) == {2}, what="revision 2 serving")

        # Trial replicas were never routed and are all stopped now.
        trial_ids = [rid for rid, config in fleet.configs.items()
                     if rid not in _serve_ids(admin) and config != new_config]
        assert trial_ids
        wait_for(lambda: not _trials(admin), what="trial replicas stopped")
        assert all(e.replica_id not in trial_ids for e in plane.routes.endpoints("chat"))
        kinds = [e.kind for e in admin.events(deployment="chat") if e.kind.startswith("optimize.")]
        assert kinds[0] == "optimize.started" and kinds[-1] == "optimize.succeeded"


def _trials(admin: Admin) -> list[pb.Replica]:
    return [r for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas if r.role == "trial"]


def _serve_ids(admin: Admin) -> set[int]:
    return {r.id for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas if r.role == "serve"}


def _serving_revision(admin: Admin) -> set[int]:
    deployment = admin.GetDeployment(pb.GetDeploymentRequest(name="chat"))
    return {r.revision for r in deployment.replicas if r.role == "serve" and r.state == pb.REPLICA_STATE_READY}


def test_advisory_measures_and_recommends_without_a_revision(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path) as (_, admin, _fleet):
        report = finished(admin, start(admin, advisory=True, techniques=["kv-cache-size"]).id)
        assert report["state"] == "succeeded" and report["result_revision"] is None
        assert "advisory: recommends kv-cache-size" in report["summary"]
        assert [r.number for r in admin.ListRevisions(pb.ListRevisionsRequest(name="chat")).revisions] == [1]


def test_a_second_run_on_the_same_deployment_is_refused_and_cancel_leaves_serving_alone(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path, hold=True) as (_, admin, fleet):
        run = start(admin)
        with pytest.raises(grpc.RpcError) as refused:
            start(admin)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert f"run {run.id} is already running on chat" in refused.value.details()
        wait_for(lambda: fleet.held, what="the baseline's first measurement to be sent")
        serving_before = _serve_ids(admin)

        cancelled = admin.CancelOptimization(pb.CancelOptimizationRequest(deployment="chat"))
        assert cancelled.state == "cancelled"
        wait_for(lambda: fleet.held[0].measurement_id in fleet.cancelled, what="CancelMeasurement")
        wait_for(lambda: not _trials(admin), what="the trial replica stopped")
        assert _serve_ids(admin) == serving_before and _ready(admin, "chat") == 1
        assert [r.number for r in admin.ListRevisions(pb.ListRevisionsRequest(name="chat")).revisions] == [1]
        with pytest.raises(grpc.RpcError) as again:
            admin.CancelOptimization(pb.CancelOptimizationRequest(id=run.id))
        assert again.value.code() == grpc.StatusCode.ABORTED
        # Cancelled, the deployment takes a new run.
        assert start(admin).state == "running"


def test_bad_options_and_unknown_techniques_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path) as (_, admin, _fleet):
        for goal, options, words in (("speed", {}, "goal must be one of"),
                                     ("throughput", {"techniques": ["turbo"]}, "turbo"),
                                     ("throughput", {"repeats": 1}, "repeats"),
                                     ("throughput", {"max_quality_drop": 5}, "max_quality_drop")):
            with pytest.raises(grpc.RpcError) as refused:
                admin.StartOptimization(pb.StartOptimizationRequest(deployment="chat", goal=goal,
                                                                    options_json=json.dumps(options)))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            admin.StartOptimization(pb.StartOptimizationRequest(deployment="nope", goal="throughput"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert not admin.ListOptimizations(pb.ListOptimizationsRequest()).runs


def test_a_control_plane_restart_in_the_middle_of_a_run_resumes_it(tmp_path: Path) -> None:
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        fleet = FleetAgent(plane, hold=True).join()
        admin.deploy("chat", **SMALL_POOL)
        wait_for(lambda: _ready(admin, "chat") == 1, what="the serving replica")
        run = start(admin, techniques=["kv-cache-size"])
        wait_for(lambda: fleet.held, what="the first measurement")
        held = fleet.held[0]
        fleet.close()
        running = fleet.running()
        configs = fleet.configs
    # The same database, a new control plane; the agent reconnects with what it runs, and finishes the
    # measurement it was running when the control plane went away.
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        fleet = FleetAgent(plane)
        fleet.configs.update(configs)
        fleet.join(running)
        try:
            fleet.answer(held)
            report = finished(admin, run.id, timeout=90)
            assert report["state"] == "succeeded", report
            measured = [m for s in report["steps"] for m in s["measurements"]]
            assert measured[0]["id"] == held.measurement_id and measured[0]["state"] == "done"
            assert [s["state"] for s in report["steps"]] == ["kept", "kept"]
            assert report["result_revision"] == 2
        finally:
            fleet.close()


def test_a_run_from_traffic_measures_with_and_stores_the_workload_made_from_the_window(tmp_path: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from llmctl.controlplane.db.models import Measurement, utcnow
    from llmctl.controlplane.db.session import make_engine, session_factory, session_scope
    from llmctl.controlplane.services import traffic

    with optimizing_fleet(tmp_path) as (plane, admin, _fleet):
        engine = make_engine(plane.database_url)
        db = session_factory(engine)
        with session_scope(db) as session:
            now = utcnow()
            for i in range(10):  # one request every 2 s, 48 prompt tokens shared, as the gateway records them
                traffic.record(session, deployment_name="chat", arrived_at=now - timedelta(seconds=20 - 2 * i),
                               prompt_tokens=80 + i, completion_tokens=16 + i, shared_prefix_tokens=48)
        with session_scope(db) as session:
            expected = traffic.window_workload(session, name="chat", window_s=600)
        run = start(admin, from_traffic=True, traffic_window_minutes=10, techniques=["kv-cache-size"])
        report = finished(admin, run.id)
        assert report["state"] == "succeeded", report["summary"]
        assert report["workload"] == expected and report["options"]["from_traffic"] is True
        assert expected["shared_prefix_len"] == 48 and expected["request_rate"] == pytest.approx(0.5, rel=1e-3)
        assert sorted(map(tuple, expected["lengths"])) == [(32 + i, 16 + i) for i in range(10)]
        with session_scope(db) as session:
            benched = [m.args["workload"] for m in session.scalars(select(Measurement)) if m.kind == "bench"]
        engine.dispose()
        assert benched and all(w == expected for w in benched)
