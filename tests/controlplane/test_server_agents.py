"""AgentService over real gRPC with scripted agents: register, Hello, commands, heartbeats, adoption."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import (
    Admin,
    ScriptedAgent,
    running_control_plane,
    status,
    wait_for,
)

H100 = pb.GpuInfo(index=0, uuid="GPU-aaaa", name="NVIDIA H100 80GB HBM3", memory_total_bytes=80 << 30)


def deployment(admin: Admin, name: str) -> pb.Deployment:
    return admin.GetDeployment(pb.GetDeploymentRequest(name=name))


def test_a_deployment_is_started_on_a_registered_agent_and_routed_once_ready(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "gpu-1", gpus=(H100,))
        reply = agent.register()
        assert reply.node_name == "gpu-1" and reply.heartbeat_interval_s == 0.2
        agent.connect()
        admin.deploy("chat", model="/models/tiny", replicas=1, max_num_seqs=8)

        start = agent.start_replica()
        assert (start.deployment, start.revision, start.model) == ("chat", 1, "/models/tiny")
        assert start.served_model_name == "chat"  # clients name the deployment; the replica answers to it
        assert json.loads(start.engine_config_json)["max_num_seqs"] == 8
        assert plane.routes.endpoints("chat") == []  # known, nothing ready: the gateway answers 503

        agent.report(start.replica_id, pb.REPLICA_STATE_STARTING)
        wait_for(lambda: deployment(admin, "chat").replicas[0].state == pb.REPLICA_STATE_STARTING)
        assert plane.routes.endpoints("chat") == []
        agent.report(start.replica_id, pb.REPLICA_STATE_READY, url="http://10.0.0.1:9001")
        wait_for(lambda: plane.routes.endpoints("chat"), what="the ready replica to be routed")
        assert [e.url for e in plane.routes.endpoints("chat")] == ["http://10.0.0.1:9001"]
        shown = deployment(admin, "chat")
        assert (shown.ready_replicas, shown.desired_replicas) == (1, 1)
        assert (shown.replicas[0].node, shown.replicas[0].url) == ("gpu-1", "http://10.0.0.1:9001")

        node, = admin.ListNodes(pb.ListNodesRequest()).nodes
        assert (node.name, node.state, node.replica_count, node.max_replicas) == ("gpu-1", "healthy", 1, 4)
        assert node.gpus[0].name == "NVIDIA H100 80GB HBM3" and node.gpus[0].memory_total_bytes == 80 << 30
        assert not node.gpus[0].HasField("utilization_percent")  # registered, no reading yet: N/A, not 0
        assert agent.quiet_for(0.5) == []  # converged: nothing more to do
        agent.close()


def test_telemetry_reaches_list_nodes_deployment_stats_and_metrics(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "gpu-1", gpus=(H100,)).join()
        admin.deploy("chat", replicas=2)
        first, second = agent.start_replica(), agent.start_replica()
        agent.serve(first)
        agent.serve(second)
        wait_for(lambda: deployment(admin, "chat").ready_replicas == 2)

        def sample(requests: int) -> pb.AgentMessage:
            gpu = pb.GpuSample(index=0, uuid="GPU-aaaa", name=H100.name, utilization_percent=87.5,
                               memory_used_bytes=60 << 30, memory_total_bytes=80 << 30, temperature_c=71.0)
            return pb.AgentMessage(telemetry=pb.TelemetrySample(
                sent_at=1.0, source=pb.TELEMETRY_SOURCE_NVML, gpus=[gpu],
                host=pb.HostSample(cpu_percent=5.0, memory_used_bytes=1 << 30, memory_total_bytes=8 << 30),
                replicas=[
                    pb.ReplicaStats(replica_id=first.replica_id, waiting=3, kv_cache_usage=0.5,
                                    ttft_p95_s=0.2, tokens_per_s=100.0, requests_total=requests),
                    pb.ReplicaStats(replica_id=second.replica_id, waiting=1, kv_cache_usage=0.25,
                                    ttft_p95_s=0.4, tokens_per_s=50.0),
                ]))

        agent.send(sample(10))
        agent.send(sample(20))

        def stats() -> pb.DeploymentStats | None:
            got = deployment(admin, "chat").stats
            return got if got.HasField("requests_per_s") else None

        got = wait_for(stats, what="deployment stats")
        assert got.queue_depth == 4 and got.tokens_per_s == 150.0
        assert got.kv_cache_usage == 0.375 and got.ttft_p95_s == 0.4  # mean usage, worst replica's p95
        assert got.requests_per_s > 0

        node, = admin.ListNodes(pb.ListNodesRequest()).nodes
        assert node.source == pb.TELEMETRY_SOURCE_NVML and node.host.cpu_percent == 5.0
        assert node.gpus[0].utilization_percent == 87.5
        assert not node.gpus[0].HasField("power_watts")  # the GPU did not report it: stays N/A

        text = httpx.get(f"{plane.gateway_url}/metrics", timeout=10).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        gpu = (("gpu", "0"), ("name", H100.name), ("node", "gpu-1"), ("uuid", "GPU-aaaa"))
        assert samples[("llmctl_node_gpu_utilization_percent", gpu)] == 87.5
        assert samples[("llmctl_node_gpu_memory_used_bytes", gpu)] == 60 << 30
        assert samples[("llmctl_node_gpu_temperature_celsius", gpu)] == 71.0
        assert ("llmctl_node_gpu_power_watts", gpu) not in samples  # never a made-up 0
        assert samples[("llmctl_node_healthy", (("node", "gpu-1"), ("state", "healthy")))] == 1
        assert samples[("llmctl_deployment_replicas_desired", (("deployment", "chat"),))] == 2
        assert samples[("llmctl_deployment_replicas_ready", (("deployment", "chat"),))] == 2
        assert samples[("llmctl_reconcile_actions_total", (("action", "start"),))] == 2
        assert any(name.startswith("llmctl_gateway_") for name, _ in samples)  # one registry for both
        agent.close()


def test_a_node_that_misses_heartbeats_has_its_replicas_started_elsewhere(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        a = ScriptedAgent(plane, "a").join()
        b = ScriptedAgent(plane, "b").join()
        admin.deploy("chat", replicas=1)
        first = a.start_replica()  # both empty: ties go by name
        a.serve(first)
        wait_for(lambda: plane.routes.endpoints("chat"))

        a.stop_heartbeats()
        moved = b.start_replica(timeout=8)
        assert moved.replica_id != first.replica_id and moved.deployment == "chat"
        nodes = {n.name: n.state for n in admin.ListNodes(pb.ListNodesRequest()).nodes}
        assert nodes == {"a": "unhealthy", "b": "healthy"}
        assert plane.routes.endpoints("chat") == []  # the lost replica is no longer routed
        lost, = admin.events("replica.lost")
        assert "node a stopped sending heartbeats" in lost.message
        b.serve(moved)
        wait_for(lambda: [e.replica_id for e in plane.routes.endpoints("chat")] == [moved.replica_id])

        # Node a comes back still running the replaced replica: it is told to stop it, not re-adopted.
        a.connect([status(first.replica_id, pb.REPLICA_STATE_READY, deployment="chat", revision=1,
                          url="http://a:1")])
        stop = a.stop_replica()
        assert stop.replica_id == first.replica_id
        wait_for(lambda: {n.state for n in admin.ListNodes(pb.ListNodesRequest()).nodes} == {"healthy"})
        assert [r.id for r in deployment(admin, "chat").replicas] == [moved.replica_id]
        a.close()
        b.close()


def test_a_restarted_control_plane_adopts_what_agents_run_without_duplicates(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=2)
        starts = [agent.start_replica(), agent.start_replica()]
        for start in starts:
            agent.serve(start, url=f"http://a:{start.replica_id}")
        wait_for(lambda: deployment(admin, "chat").ready_replicas == 2)
        agent.close()
    ids = sorted(s.replica_id for s in starts)

    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        # Before any agent is back, the gateway already routes to the replicas SQL last saw ready.
        assert sorted(e.replica_id for e in plane.routes.endpoints("chat")) == ids
        agent = ScriptedAgent(plane, "a").join([
            status(s.replica_id, pb.REPLICA_STATE_READY, deployment="chat", revision=1,
                   url=f"http://a:{s.replica_id}")
            for s in starts
        ])
        assert agent.quiet_for(1.0) == []  # nothing started twice, nothing stopped
        shown = deployment(admin, "chat")
        assert sorted(r.id for r in shown.replicas) == ids and shown.ready_replicas == 2
        assert admin.events("replica.lost") == [] and admin.events("rollout.completed") != []
        agent.close()


def test_replicas_an_agent_no_longer_runs_are_replaced_and_strays_stopped(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.deploy("chat", replicas=1)
        first = agent.start_replica()
        agent.serve(first)
        wait_for(lambda: deployment(admin, "chat").ready_replicas == 1)
        agent.disconnect()

        # The agent restarted: its replica is gone, and it runs one this control plane never made.
        agent.connect([status(999, pb.REPLICA_STATE_READY, deployment="old", revision=3, url="http://a:999")])
        commands = [agent.next_command(), agent.next_command()]
        kinds = {m.WhichOneof("kind"): m for m in commands}
        assert kinds["stop_replica"].stop_replica.replica_id == 999
        replacement = kinds["start_replica"].start_replica
        assert replacement.replica_id != first.replica_id and replacement.deployment == "chat"
        lost, = admin.events("replica.lost")
        assert "no longer runs it" in lost.message
        agent.close()


def test_deleting_a_deployment_unroutes_then_stops_its_replicas(tmp_path: Path):
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        routed_at_stop: list[list] = []
        agent = ScriptedAgent(plane, "a", on_command=lambda m: routed_at_stop.append(
            plane.routes.endpoints("chat")) if m.HasField("stop_replica") else None).join()
        admin.deploy("chat", replicas=1)
        start = agent.start_replica()
        agent.serve(start)
        wait_for(lambda: plane.routes.endpoints("chat"))

        admin.DeleteDeployment(pb.DeleteDeploymentRequest(name="chat"))
        stop = agent.stop_replica()
        assert stop.replica_id == start.replica_id and stop.drain and stop.grace_s > 0
        assert routed_at_stop == [[]]
        assert not plane.routes.knows("chat")  # unknown model now (404), not merely unready
        agent.report(start.replica_id, pb.REPLICA_STATE_DRAINING)
        agent.report(start.replica_id, pb.REPLICA_STATE_STOPPED)
        assert agent.quiet_for(0.6) == []
        agent.close()


def test_an_idle_agent_stream_carries_a_ping_every_heartbeat_interval(tmp_path: Path):
    with running_control_plane(tmp_path) as plane:
        agent = ScriptedAgent(plane, "a").join()
        interval = plane.config.heartbeat_interval_s
        wait_for(lambda: agent.pings >= 1, timeout=interval + 2)
        first = agent.pings
        time.sleep(3 * interval)
        assert 2 <= agent.pings - first <= 4  # one per idle interval: proof of life, not chatter
        assert agent.quiet_for(0.1) == []  # pings never show up as commands
        agent.close()
