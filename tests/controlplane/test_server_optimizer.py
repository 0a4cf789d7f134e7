"""The optimizer through a real control plane (gRPC, SQL, the job thread) and a scripted agent that serves
trial replicas and answers measurements message by message, as the agent daemon does. Speeds and quality
come from a small performance model of the configurations, so every decision is known in advance; the real
engine and SmolLM2 run the same loop in tests/e2e/test_optimize.py."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, running_control_plane, wait_for
from tests.controlplane.optimizer_fleet import (
    SMALL_POOL,
    FleetAgent,
    finished,
    optimizing_fleet,
    ready_replicas,
    start,
)


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
        assert _serve_ids(admin) == serving_before and ready_replicas(admin, "chat") == 1
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
        wait_for(lambda: ready_replicas(admin, "chat") == 1, what="the serving replica")
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


def test_on_a_node_with_room_for_one_trial_replica_the_two_arms_take_turns(tmp_path: Path) -> None:
    # Two slots: the serving replica and one trial replica. Each measurement of the other arm first stops
    # the idle arm's replica, so no two trial replicas ever run at once and the node is never over capacity.
    with optimizing_fleet(tmp_path, max_replicas=2) as (_, admin, fleet):
        report = finished(admin, start(admin, techniques=["kv-cache-size"]).id)
        assert report["state"] == "succeeded", report["summary"]
        step = report["steps"][1]
        assert step["state"] == "kept", step["reason"]
        assert [m["arm"] for m in step["measurements"]] == ["A", "B", "A", "B", "A"]
        used = [m["replica_id"] for m in step["measurements"]]
        assert len(set(used)) == 5, "every switch of arm started a fresh replica"
        serving = {r.id for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas
                   if r.role == "serve"}
        trials = [rid for rid in fleet.configs if rid not in serving]
        assert set(used) <= set(trials) and all(rid in fleet.stopped for rid in used[:-1])


def test_a_candidate_whose_replica_cannot_start_fails_its_step_and_the_run_goes_on(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path, broken_kv_dtype="int8") as (_, admin, fleet):
        report = finished(admin, start(admin, techniques=["kv-cache-size", "kv-int8"]).id)
        steps = {s["technique"]: s for s in report["steps"]}
        assert report["state"] == "succeeded" and report["result_revision"] == 2, report["summary"]
        assert steps["kv-cache-size"]["state"] == "kept"
        failed = steps["kv-int8"]
        assert failed["state"] == "failed"
        assert failed["reason"].startswith("its trial replica failed to start 2 times: gave up after 3 failed "
                                           "starts: engine crashed: out of memory")
        broken = [rid for rid, config in fleet.configs.items() if config.get("kv_cache_dtype") == "int8"]
        assert len(broken) == 2
        wait_for(lambda: not [r for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas
                              if r.role == "trial"], what="trial replicas stopped")


def test_a_run_whose_baseline_cannot_be_measured_fails_and_stops_its_trial_replica(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path, failing_benches=-1) as (_, admin, fleet):
        report = finished(admin, start(admin).id)
        assert report["state"] == "failed"
        # One failed bench is taken again; the second failure is the verdict.
        assert report["error"].startswith("the baseline could not be measured: bench ")
        assert "failed 2 times" in report["error"]
        assert "connection refused" in report["error"]
        assert [s["state"] for s in report["steps"]] == ["failed"]
        wait_for(lambda: not [r for r in admin.GetDeployment(pb.GetDeploymentRequest(name="chat")).replicas
                              if r.role == "trial"], what="the trial replica stopped")
        trial = [rid for rid in fleet.configs if rid in fleet.stopped]
        assert trial, "the agent was told to stop the trial replica"
        assert [r.number for r in admin.ListRevisions(pb.ListRevisionsRequest(name="chat")).revisions] == [1]
        assert [e.kind for e in admin.events("optimize.failed", deployment="chat")] == ["optimize.failed"]


def test_a_bench_that_fails_once_is_taken_again_and_the_run_goes_on(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path, failing_benches=1) as (_, admin, _fleet):
        report = finished(admin, start(admin, techniques=["kv-cache-size"]).id)
        assert report["state"] == "succeeded", report["summary"]
        baseline = report["steps"][0]["measurements"]
        assert [m["state"] for m in baseline] == ["failed", "done", "done"]
        assert "connection refused" in baseline[0]["error"]
        assert report["steps"][1]["state"] == "kept"
