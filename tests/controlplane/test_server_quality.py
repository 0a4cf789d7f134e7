"""The scorer replica, driven through AdminService with scripted agents: a sampling deployment gets one
replica of its quality reference that the gateway never routes to; it follows the reference, survives
rollouts of the serving revision, and goes away when sampling is turned off."""

from __future__ import annotations

from pathlib import Path

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for


def current(admin: Admin) -> pb.Deployment:
    return admin.GetDeployment(pb.GetDeploymentRequest(name="chat"))


def routed(plane) -> set[int]:
    return {e.replica_id for e in plane.routes.endpoints("chat")}


def test_a_sampling_deployment_keeps_one_unrouted_scorer_of_its_reference(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", quality_sample_rate=0.5)
        first, second = agent.start_replica(), agent.start_replica()
        for start in (first, second):
            agent.serve(start)
        roles = {r.id: r.role for r in wait_for(lambda: len(current(admin).replicas) == 2 and current(admin)).replicas}
        serve = next(i for i, role in roles.items() if role == "serve")
        scorer = next(i for i, role in roles.items() if role == "score")
        wait_for(lambda: routed(plane) == {serve}, what="only the serving replica routed")
        shown = current(admin)
        assert (shown.ready_replicas, shown.desired_replicas) == (1, 1)  # the scorer is not a serving replica
        assert shown.quality.reference_revision == 1 and shown.quality.sample_rate == 0.5
        assert plane.sampling.rate("chat") == 0.5

        # A new revision (quantized) rolls out beside the scorer, which stays on the float reference.
        admin.deploy("chat", quality_sample_rate=0.5, quantization="int8")
        new = agent.start_replica()
        assert new.revision == 2
        agent.serve(new)
        assert agent.stop_replica().replica_id == serve
        assert agent.quiet_for(0.5) == []
        assert scorer in {r.id for r in current(admin).replicas}

        # The reference moves to revision 2: a scorer of it starts, then the old scorer stops.
        admin.SetQualityReference(pb.SetQualityReferenceRequest(name="chat", revision=2))
        moved = agent.start_replica()
        assert moved.revision == 2
        agent.serve(moved)
        assert agent.stop_replica().replica_id == scorer

        # Sampling off: no scorer, nothing sampled.
        admin.deploy("chat", quality_sample_rate=0.0, quantization="int8")
        assert agent.stop_replica().replica_id == moved.replica_id
        wait_for(lambda: plane.sampling.rate("chat") == 0.0, what="sampling off in the gateway")
        assert [r.role for r in current(admin).replicas if r.state != pb.REPLICA_STATE_DRAINING] == ["serve"]


def test_a_deployment_with_no_unquantized_revision_has_no_scorer(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", quality_sample_rate=1.0, quantization="int8")
        agent.serve(agent.start_replica())
        assert agent.quiet_for(0.8) == []  # no reference to judge against, so no scorer to start
        assert current(admin).quality.reference_revision == 0
