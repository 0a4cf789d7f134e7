"""The control plane with two real agent daemons serving a tiny random Llama: deploy, spread, complete."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil

from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.agent.fake_nvml import FakeGpu, FakeNvml
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, running_control_plane, wait_for

ENGINE = {"dtype": "float32", "num_threads": 1, "num_kv_blocks": 64, "max_num_seqs": 4}


def test_two_agents_serve_a_deployment_through_the_gateway(tmp_path: Path, tiny_llama: Path):
    with running_control_plane(tmp_path, heartbeat_interval_s=0.5, node_timeout_s=10) as plane, \
            Admin(plane.grpc_address, plane.admin_token) as admin:
        daemons = [
            AgentDaemon(AgentConfig(plane.grpc_address, plane.join_token, node_name=name, max_replicas=2,
                                    log_dir=tmp_path / f"logs-{name}", telemetry_interval_s=0.5,
                                    max_backoff_s=1.0,
                                    nvml=FakeNvml([FakeGpu(name="NVIDIA L4", utilization_percent=30)])))
            for name in ("node-a", "node-b")
        ]
        pids: list[int] = []
        try:
            for daemon in daemons:
                daemon.start()
            wait_for(lambda: all(d.connected for d in daemons), timeout=20, what="both agents to connect")
            admin.Deploy(pb.DeployRequest(name="tiny", model=str(tiny_llama), replicas=2, quality_sample_rate=0,
                                          engine_config_json=json.dumps(ENGINE)))

            def ready() -> pb.Deployment | None:
                shown = admin.GetDeployment(pb.GetDeploymentRequest(name="tiny"))
                errors = [r.error for r in shown.replicas if r.state == pb.REPLICA_STATE_FAILED]
                assert not errors, f"a replica failed: {errors}"
                return shown if shown.ready_replicas == 2 else None

            shown = wait_for(ready, timeout=120, what="two READY replicas")
            assert sorted(r.node for r in shown.replicas) == ["node-a", "node-b"]  # spread, one per node
            pids = [s.pid for d in daemons for s in d.statuses() if s.pid is not None]

            key = admin.CreateTenant(pb.CreateTenantRequest(name="acme")).api_key
            for _ in range(2):
                reply = httpx.post(f"{plane.gateway_url}/v1/completions", timeout=60,
                                   headers={"authorization": f"Bearer {key}"},
                                   json={"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 4})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["model"] == "tiny" and body["usage"]["completion_tokens"] >= 1
            # Usage rows are written after each answer, off the request path.
            usage = wait_for(lambda: [r for r in admin.GetUsage(pb.GetUsageRequest(tenant="acme")).rows
                                      if r.requests == 2], what="both requests' usage")
            assert usage[0].deployment == "tiny" and usage[0].cost_usd > 0

            node = next(n for n in admin.ListNodes(pb.ListNodesRequest()).nodes if n.name == "node-a")
            assert node.gpus[0].name == "NVIDIA L4" and node.replica_count == 1
        finally:
            for daemon in daemons:
                daemon.stop()
        assert pids and not any(psutil.pid_exists(pid) for pid in pids), "a replica outlived its agent"
