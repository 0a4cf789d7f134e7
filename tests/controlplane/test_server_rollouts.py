"""Rollouts, automatic rollback, scaling and draining, driven through AdminService with scripted agents."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for


def current(admin: Admin, name: str = "chat") -> pb.Deployment:
    return admin.GetDeployment(pb.GetDeploymentRequest(name=name))


def routed(plane, name: str = "chat") -> set[int]:
    return {e.replica_id for e in plane.routes.endpoints(name)}


def test_old_replicas_are_drained_only_after_new_ones_are_ready_and_unrouted_first(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        seen_at_stop: dict[int, set[int]] = {}

        def on_command(message: pb.ControlMessage) -> None:
            if message.HasField("stop_replica"):  # what the gateway could route to when the stop went out
                seen_at_stop[message.stop_replica.replica_id] = routed(plane)

        a = ScriptedAgent(plane, "a", on_command=on_command).join()
        b = ScriptedAgent(plane, "b", on_command=on_command).join()
        admin.deploy("chat", replicas=2)
        old = {"a": a.start_replica(), "b": b.start_replica()}
        a.serve(old["a"])
        b.serve(old["b"])
        wait_for(lambda: current(admin).ready_replicas == 2)

        admin.deploy("chat", replicas=2, max_num_seqs=8)  # a new revision
        new = {"a": a.start_replica(), "b": b.start_replica()}
        assert {s.revision for s in new.values()} == {2}
        assert json.loads(new["a"].engine_config_json)["max_num_seqs"] == 8
        a.report(new["a"].replica_id, pb.REPLICA_STATE_STARTING)
        assert a.quiet_for(0.6) == [] and b.quiet_for(0) == []  # nothing new is ready: the old ones stay
        assert routed(plane) == {old["a"].replica_id, old["b"].replica_id}

        a.serve(new["a"])
        stopped = _one_stop(a, b)
        assert stopped.drain and stopped.replica_id in {old["a"].replica_id, old["b"].replica_id}
        # The gateway had the new replica and had lost the stopped one before the StopReplica went out.
        assert new["a"].replica_id in seen_at_stop[stopped.replica_id]
        assert stopped.replica_id not in seen_at_stop[stopped.replica_id]
        assert a.quiet_for(0.5) == [] and b.quiet_for(0) == []  # one new ready: exactly one old stops

        b.serve(new["b"])
        second = _one_stop(a, b)
        assert {stopped.replica_id, second.replica_id} == {old["a"].replica_id, old["b"].replica_id}
        wait_for(lambda: routed(plane) == {new["a"].replica_id, new["b"].replica_id})
        shown = current(admin)
        assert (shown.revision, shown.ready_replicas) == (2, 2)
        wait_for(lambda: [json.loads(e.details_json)["revision"] for e in admin.events("rollout.completed")]
                 == [1, 2], what="the rollout to complete")
        a.close()
        b.close()


def _one_stop(*agents: ScriptedAgent) -> pb.StopReplica:
    wait_for(lambda: any(not agent.commands.empty() for agent in agents), timeout=5, what="a StopReplica")
    agent = next(agent for agent in agents if not agent.commands.empty())
    return agent.stop_replica(timeout=1)


def test_a_revision_whose_replicas_keep_failing_is_rolled_back_automatically(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=1)
        old = agent.start_replica()
        agent.serve(old)
        wait_for(lambda: current(admin).ready_replicas == 1)

        admin.deploy("chat", replicas=1, max_num_seqs=8)
        new = agent.start_replica()
        error = "CUDA out of memory while allocating the KV cache"
        for restarts in range(3):  # the agent retries; the third failed start is the last
            agent.report(new.replica_id, pb.REPLICA_STATE_STARTING, restarts=restarts)
            agent.report(new.replica_id, pb.REPLICA_STATE_FAILED, error=error, restarts=restarts)
            assert routed(plane) == {old.replica_id}  # the old revision serves throughout

        stop = agent.stop_replica()
        assert stop.replica_id == new.replica_id and not stop.drain  # never served: nothing to drain
        wait_for(lambda: current(admin).revision == 1, what="the rollback")
        failed, = admin.events("rollout.failed")
        assert error in failed.message and json.loads(failed.details_json)["rolled_back_to"] == 1
        rolled, = admin.events("deployment.rolled_back")
        assert json.loads(rolled.details_json)["reason"] == f"auto-rollback: {error}"
        assert rolled.actor == "reconciler"
        assert agent.quiet_for(0.6) == []  # the old replica was never stopped nor restarted
        assert [r.id for r in current(admin).replicas] == [old.replica_id]
        agent.close()


def test_a_revision_not_ready_within_the_rollout_timeout_is_rolled_back(tmp_path: Path):
    with running_control_plane(tmp_path, rollout_timeout_s=1.5) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=1)
        old = agent.start_replica()
        agent.serve(old)
        wait_for(lambda: current(admin).ready_replicas == 1)

        admin.deploy("chat", replicas=1, max_num_seqs=8)
        new = agent.start_replica()
        agent.report(new.replica_id, pb.REPLICA_STATE_STARTING)  # ... and it never gets ready
        stop = agent.stop_replica(timeout=5)
        assert stop.replica_id == new.replica_id
        assert current(admin).revision == 1
        failed, = admin.events("rollout.failed")
        assert "only 0 of 1 replica(s) of revision 2 became ready within 1.5s" in failed.message
        assert routed(plane) == {old.replica_id}
        agent.close()


def test_a_failing_first_revision_stops_being_started_until_the_operator_acts(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", model="/no/such/model", replicas=1)
        start = agent.start_replica()
        for restarts in range(3):
            agent.report(start.replica_id, pb.REPLICA_STATE_FAILED, error="model not found",
                         restarts=restarts)
        assert agent.stop_replica().replica_id == start.replica_id
        failed, = admin.events("rollout.failed")
        assert "model not found" in failed.message and "none was rolled back to" in failed.message
        assert agent.quiet_for(0.8) == []  # no crash loop of fresh replicas
        assert current(admin).replicas == []

        admin.Scale(pb.ScaleRequest(name="chat", replicas=2))  # the operator acts: try again
        assert agent.start_replica().replica_id != start.replica_id
        agent.close()


def test_scaling_down_stops_the_newest_replicas_first(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=3)
        starts = [agent.start_replica() for _ in range(3)]
        for start in starts:
            agent.serve(start)
        wait_for(lambda: current(admin).ready_replicas == 3)

        admin.Scale(pb.ScaleRequest(name="chat", replicas=1))
        stops = [agent.stop_replica(), agent.stop_replica()]
        ids = sorted(s.replica_id for s in starts)
        assert sorted(s.replica_id for s in stops) == ids[1:] and all(s.drain for s in stops)
        assert routed(plane) == {ids[0]}
        assert [r.state for r in current(admin).replicas] == [
            pb.REPLICA_STATE_READY, pb.REPLICA_STATE_DRAINING, pb.REPLICA_STATE_DRAINING]
        for stop in stops:
            agent.report(stop.replica_id, pb.REPLICA_STATE_STOPPED)
        wait_for(lambda: [r.id for r in current(admin).replicas] == ids[:1])
        agent.close()


def test_draining_a_node_moves_its_replicas_before_stopping_them(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        a = ScriptedAgent(plane, "a").join()
        b = ScriptedAgent(plane, "b").join()
        admin.deploy("chat", replicas=1)
        first = a.start_replica()
        a.serve(first)
        wait_for(lambda: current(admin).ready_replicas == 1)

        assert admin.DrainNode(pb.DrainNodeRequest(name="a")).state == "draining"
        moved = b.start_replica()
        assert a.quiet_for(0.6) == []  # still serving until its replacement is ready
        assert routed(plane) == {first.replica_id}
        b.serve(moved)
        stop = a.stop_replica()
        assert stop.replica_id == first.replica_id and stop.drain
        a.report(first.replica_id, pb.REPLICA_STATE_STOPPED)
        assert a.next_command("drain").drain.reason  # told once its node is empty
        drained, = admin.events("node.drained")
        assert drained.node == "a"

        admin.deploy("other", replicas=2)  # a drained node takes no new work
        assert b.start_replica().deployment == "other" and b.start_replica().deployment == "other"
        assert a.quiet_for(0.5) == []

        assert admin.UndrainNode(pb.UndrainNodeRequest(name="a")).state == "healthy"
        admin.deploy("third", replicas=1)  # back in placement, and the emptier node
        assert a.start_replica().deployment == "third"
        with pytest.raises(grpc.RpcError) as refused:
            admin.UndrainNode(pb.UndrainNodeRequest(name="b"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not draining" in refused.value.details()
        a.close()
        b.close()


def test_a_fleet_without_room_says_so_once_and_places_when_a_node_joins(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        a = ScriptedAgent(plane, "a", max_replicas=1).join()
        admin.deploy("chat", replicas=2)
        a.start_replica()
        wait_for(lambda: admin.events("deployment.unschedulable"))
        assert a.quiet_for(1.0) == []  # several reconcile passes ...
        short, = admin.events("deployment.unschedulable")  # ... one event
        assert "no healthy connected node has room for 1 more replica(s) of chat" in short.message

        b = ScriptedAgent(plane, "b").join()
        assert b.start_replica().deployment == "chat"
        a.close()
        b.close()


def test_a_rollout_without_room_to_surge_replaces_the_old_replicas_one_at_a_time(tmp_path: Path):
    # A node that takes two replicas (a 2-core CPU node) running two: no room for a new one beside them.
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        a = ScriptedAgent(plane, "a", max_replicas=2).join()
        admin.deploy("chat", replicas=2)
        old = [a.start_replica(), a.start_replica()]
        for start in old:
            a.serve(start)
        wait_for(lambda: current(admin).ready_replicas == 2)

        admin.deploy("chat", replicas=2, max_num_seqs=8)
        first = a.stop_replica(timeout=5)  # the oldest drains to free its slot; the other keeps serving
        assert first.drain and first.replica_id == old[0].replica_id
        assert routed(plane) == {old[1].replica_id}
        assert a.quiet_for(0.6) == []  # its slot is not free until it has stopped
        a.report(first.replica_id, pb.REPLICA_STATE_STOPPED)
        new = a.start_replica()
        assert new.revision == 2
        a.serve(new)
        second = a.stop_replica(timeout=5)
        assert second.replica_id == old[1].replica_id
        a.report(second.replica_id, pb.REPLICA_STATE_STOPPED)
        a.serve(a.start_replica())
        wait_for(lambda: [json.loads(e.details_json)["revision"] for e in admin.events("rollout.completed")]
                 == [1, 2], what="the rollout to complete")
        reasons = [e.message for e in admin.events("replica.stopping")]
        assert all("replaced one at a time" in m for m in reasons) and len(reasons) == 2
        a.close()
