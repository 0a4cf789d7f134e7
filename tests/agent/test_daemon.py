"""The agent daemon against a real control plane (gRPC on loopback, SQLite, the gateway over HTTP) with real
`llmctl serve` replicas of a tiny random Llama. NVML is the only fake (FakeNvml, the hardware edge)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest

from llmctl.agent import daemon_convert as convert
from llmctl.agent.daemon import AgentConfig, AgentConfigError, AgentDaemon, default_node_name, reconnect_delay
from llmctl.agent.fake_nvml import GIB, FakeGpu, FakeNvml
from llmctl.agent.replicas import ReplicaState, ReplicaStatus, free_port
from llmctl.agent.telemetry import HostTelemetry, NvmlTelemetry
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.server import ControlPlane, ServerConfig
from tests.factories import make_tiny_llama

DEPLOYMENT = "chat"
ENGINE = {"dtype": "float32", "num_threads": 1, "num_kv_blocks": 128}
H100 = "NVIDIA H100 80GB HBM3"


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def fake_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu(name=H100, memory_used_bytes=12 * GIB, utilization_percent=42, power_watts=250.0,
                temperature_c=55, processes=[(4242, 11 * GIB), (4243, None)]),
        FakeGpu(name="NVIDIA L4", memory_total_bytes=24 * GIB,
                unsupported={"power", "temperature", "sm_clock"}),
    ])


# -- without a control plane: wire conversion, command checks, config, backoff -------------------------------
def test_telemetry_sample_carries_nvml_readings_and_leaves_unsupported_ones_unset():
    telemetry = NvmlTelemetry(fake_gpus())
    sample = convert.telemetry_to_proto(telemetry.read(), {7: {"running": 2, "kv_cache_usage": 0.25}})
    assert sample.source == pb.TELEMETRY_SOURCE_NVML and sample.host.memory_total_bytes > 0
    h100, l4 = sample.gpus
    assert (h100.name, h100.uuid, h100.utilization_percent) == (H100, "GPU-fake-0000", 42.0)
    assert (h100.memory_used_bytes, h100.power_watts, h100.temperature_c) == (12 * GIB, 250.0, 55.0)
    assert [(p.pid, p.HasField("used_memory_bytes")) for p in h100.processes] == [(4242, True), (4243, False)]
    assert l4.memory_total_bytes == 24 * GIB
    for field in ("power_watts", "temperature_c", "sm_clock_mhz"):
        assert not l4.HasField(field), f"{field} is unsupported on this GPU and must stay unset, not 0"
    (stats,) = sample.replicas
    assert (stats.replica_id, stats.running, stats.kv_cache_usage) == (7, 2, 0.25)
    assert not stats.HasField("ttft_p95_s") and not stats.HasField("tokens_per_s")
    telemetry.close()


def test_host_only_node_reports_its_source_and_no_gpu_numbers():
    sample = convert.telemetry_to_proto(HostTelemetry().read())
    assert sample.source == pb.TELEMETRY_SOURCE_HOST and len(sample.gpus) == 0
    assert sample.HasField("host") and sample.host.memory_total_bytes > 0


def test_replica_status_goes_on_the_wire_with_its_state_and_without_the_local_pid():
    status = ReplicaStatus(5, "chat", 3, ReplicaState.FAILED, error="boom", restarts=2, pid=1234)
    wire = convert.status_to_proto(status)
    assert (wire.replica_id, wire.deployment, wire.revision) == (5, "chat", 3)
    assert (wire.state, wire.error, wire.restarts) == (pb.REPLICA_STATE_FAILED, "boom", 2)
    assert "pid" not in {f.name for f, _ in wire.ListFields()}
    assert convert.replica_state_to_proto(ReplicaState.DRAINING) == pb.REPLICA_STATE_DRAINING


@pytest.mark.parametrize(("start", "message"), [
    (dict(engine_config_json="{bad"), "is not valid JSON"),
    (dict(engine_config_json="[1, 2]"), "must be a JSON object"),
    (dict(model=""), "has no model"),
    (dict(deployment=""), "has no deployment"),
])
def test_a_malformed_start_command_is_refused_with_the_reason(start: dict, message: str):
    fields = {"replica_id": 9, "deployment": "chat", "revision": 1, "model": "m", "engine_config_json": "{}",
              **start}
    with pytest.raises(convert.BadCommand, match=message):
        convert.parse_start(pb.StartReplica(**fields))


def test_start_command_defaults_the_served_name_to_the_deployment():
    spec = convert.parse_start(pb.StartReplica(replica_id=1, deployment="chat", revision=2, model="m",
                                               engine_config_json='{"dtype": "float32"}'))
    assert spec == dict(deployment="chat", revision=2, model="m", engine_config={"dtype": "float32"},
                        served_model_name="chat")


@pytest.mark.parametrize(("fields", "message"), [
    (dict(control_plane="localhost"), "not HOST:PORT"),
    (dict(control_plane="localhost:99999"), "not HOST:PORT"),
    (dict(join_token=""), "join token"),
    (dict(join_token="two words"), "join token"),
    (dict(node_name="GPU_Box"), "invalid node name"),
    (dict(max_replicas=-1), "max_replicas"),
    (dict(telemetry_interval_s=0), "telemetry_interval_s"),
    (dict(max_backoff_s=0.1), "max_backoff_s"),
])
def test_agent_config_rejects_values_that_cannot_work(fields: dict, message: str):
    with pytest.raises(AgentConfigError, match=message):
        AgentConfig(**{"control_plane": "127.0.0.1:50051", "join_token": "t", **fields})


def test_an_unusable_log_dir_is_refused_at_start(tmp_path: Path):
    (tmp_path / "taken").write_text("a file, not a folder")
    daemon = AgentDaemon(AgentConfig("127.0.0.1:1", "t", node_name="n", log_dir=tmp_path / "taken" / "logs"))
    with pytest.raises(AgentConfigError, match="cannot create the replica log folder .*--log-dir"):
        daemon.start()
    daemon.stop()  # nothing was started; stopping is harmless


def test_default_node_name_is_a_valid_node_name():
    AgentConfig("127.0.0.1:1", "t", node_name=default_node_name())


def test_reconnect_delay_starts_at_half_a_second_doubles_and_stops_at_the_cap():
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0), (200, 30.0)]:
        delays = [reconnect_delay(attempt, 30.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_agent_without_a_control_plane_keeps_retrying_and_still_answers_commands(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="llmctl.agent.daemon")
    address = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    daemon = AgentDaemon(AgentConfig(address, "t", node_name="lonely", max_backoff_s=0.5, log_dir=tmp_path,
                                     nvml=FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)))
    daemon.start()
    try:
        wait_until(lambda: sum("cannot register with" in r.getMessage() for r in caplog.records) >= 3, 10,
                   "three failed registrations")
        assert not daemon.connected
        bad = pb.ControlMessage(start_replica=pb.StartReplica(replica_id=3, deployment="chat", revision=1,
                                                              model="m", engine_config_json="{not json"))
        (reply,) = daemon.handle(bad)
        assert reply.state == pb.REPLICA_STATE_FAILED and "not valid JSON" in reply.error
        (reply,) = daemon.handle(pb.ControlMessage(stop_replica=pb.StopReplica(replica_id=4)))
        assert reply.state == pb.REPLICA_STATE_STOPPED and "no replica 4" in reply.error
        assert daemon.handle(pb.ControlMessage()) == [] and daemon.statuses() == []
        measure = pb.ControlMessage(run_measurement=pb.RunMeasurement(measurement_id=8, kind="bench",
                                                                      args_json="{nope"))
        (answer,) = daemon.handle(measure)
        assert (answer.measurement_id, answer.ok) == (8, False) and "not valid JSON" in answer.error
    finally:
        started = time.monotonic()
        daemon.stop()
    assert time.monotonic() - started < 5


def test_stop_does_not_wait_for_a_control_plane_that_never_answers(tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP connections, never speaks gRPC
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        daemon = AgentDaemon(AgentConfig(address, "t", node_name="patient", log_dir=tmp_path,
                                         nvml=FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)))
        daemon.start()
        time.sleep(1.0)  # the Register call is now waiting on the silent peer
        started = time.monotonic()
        daemon.stop()
        assert time.monotonic() - started < 3 and not daemon.connected


# -- against a real control plane -------------------------------------------------------------------------
@dataclass
class Cluster:
    home: Path
    plane: ControlPlane
    agent: AgentDaemon
    model: Path

    def admin(self) -> tuple[pb_grpc.AdminServiceStub, tuple]:
        channel = grpc.insecure_channel(self.plane.grpc_address)
        return pb_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {self.plane.admin_token}"),)

    def call(self, method: str, request: Any) -> Any:
        stub, metadata = self.admin()
        return getattr(stub, method)(request, metadata=metadata, timeout=10)

    def restart_plane(self) -> None:
        port = int(self.plane.grpc_address.rpartition(":")[2])
        self.plane.stop()
        self.plane = start_plane(self.home, port)


def start_plane(home: Path, grpc_port: int = 0) -> ControlPlane:
    plane = ControlPlane(ServerConfig(grpc_port=grpc_port, gateway_port=0, home=home, node_timeout_s=8,
                                      heartbeat_interval_s=0.5, reconcile_interval_s=0.3))
    plane.start()
    return plane


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("cp-home")
    model = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    plane = start_plane(home)
    agent = AgentDaemon(AgentConfig(plane.grpc_address, plane.join_token, node_name="gpu-1", max_replicas=2,
                                    log_dir=tmp_path_factory.mktemp("replica-logs"), telemetry_interval_s=0.5,
                                    max_backoff_s=1.0, nvml=fake_gpus()))
    agent.start()
    cluster = Cluster(home, plane, agent, model)
    try:
        yield cluster
        pids = [s.pid for s in agent.statuses() if s.pid is not None]
    finally:
        agent.stop()
        cluster.plane.stop()
    assert agent.statuses() == [], "stop() left replicas behind"
    assert not any(psutil.pid_exists(pid) for pid in pids), "a replica process outlived the agent"


def node(cluster: Cluster, name: str) -> pb.Node | None:
    nodes = cluster.call("ListNodes", pb.ListNodesRequest()).nodes
    return next((n for n in nodes if n.name == name), None)


def get_deployment(cluster: Cluster) -> pb.Deployment:
    return cluster.call("GetDeployment", pb.GetDeploymentRequest(name=DEPLOYMENT))


def test_agent_registers_and_the_control_plane_lists_its_fake_gpus(cluster: Cluster):
    wait_until(lambda: cluster.agent.connected, 15, "the agent to connect")
    listed = wait_until(lambda: (n := node(cluster, "gpu-1")) and n.HasField("host") and n, 10, "telemetry")
    assert listed.state == "healthy" and listed.max_replicas == 2 and listed.engine_version
    assert listed.source == pb.TELEMETRY_SOURCE_NVML
    h100, l4 = listed.gpus
    assert (h100.name, h100.utilization_percent, h100.memory_used_bytes) == (H100, 42.0, 12 * GIB)
    assert (h100.power_watts, h100.temperature_c) == (250.0, 55.0)
    assert l4.name == "NVIDIA L4" and not l4.HasField("power_watts") and not l4.HasField("temperature_c")


@pytest.fixture(scope="module")
def ready_replica(cluster: Cluster) -> ReplicaStatus:
    """The deployment, deployed once through AdminService and READY on the agent."""
    cluster.call("Deploy", pb.DeployRequest(name=DEPLOYMENT, model=str(cluster.model),
                                            engine_config_json=json.dumps(ENGINE), replicas=1,
                                            quality_sample_rate=0))  # no scorer replica: one replica here

    def ready() -> ReplicaStatus | None:
        statuses = cluster.agent.statuses()
        failed = [s.error for s in statuses if s.state is ReplicaState.FAILED]
        assert not failed, f"replica failed: {failed}"
        return next((s for s in statuses if s.state is ReplicaState.READY), None)

    return wait_until(ready, 90, "a READY replica on the agent")


def completion(plane: ControlPlane, api_key: str) -> dict:
    r = httpx.post(f"{plane.gateway_url}/v1/completions", timeout=60,
                   headers={"Authorization": f"Bearer {api_key}"},
                   json={"model": DEPLOYMENT, "prompt": "Hello world", "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def api_key(cluster: Cluster) -> str:
    return cluster.call("CreateTenant", pb.CreateTenantRequest(name="acme")).api_key


def test_deployed_replica_becomes_ready_on_the_agent_and_serves_through_the_gateway(
        cluster: Cluster, ready_replica: ReplicaStatus, api_key: str):
    deployment = wait_until(lambda: (d := get_deployment(cluster)).ready_replicas == 1 and d, 15,
                            "the control plane to see the replica READY")
    (replica,) = deployment.replicas
    assert (replica.id, replica.node, replica.url) == (ready_replica.replica_id, "gpu-1", ready_replica.url)
    body = completion(cluster.plane, api_key)
    assert body["model"] == DEPLOYMENT and body["usage"]["completion_tokens"] >= 1
    # The agent scrapes the replica's /metrics into its telemetry; the control plane aggregates it.
    stats = wait_until(lambda: (d := get_deployment(cluster)).stats.HasField("ttft_p95_s") and d.stats, 10,
                       "replica stats from the agent's telemetry")
    assert stats.ttft_p95_s > 0 and 0 <= stats.kv_cache_usage <= 1


def test_wrong_join_token_never_connects_and_says_so(cluster: Cluster, tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, logger="llmctl.agent.daemon")
    intruder = AgentDaemon(AgentConfig(cluster.plane.grpc_address, "not-the-token", node_name="intruder",
                                       max_backoff_s=0.5, log_dir=tmp_path, nvml=fake_gpus()))
    intruder.start()
    try:
        record = wait_until(lambda: next((r for r in caplog.records if "join token" in r.getMessage()), None),
                            10, "the refusal to be logged")
        assert record.levelno == logging.ERROR and "refused this agent's join token" in record.getMessage()
        assert "--join-token" in record.getMessage()
        time.sleep(1.5)  # several retries, none of which gets in
        assert not intruder.connected and node(cluster, "intruder") is None
        assert sum("join token" in r.getMessage() for r in caplog.records) >= 2
    finally:
        intruder.stop()


AGENT_SCRIPT = """
import sys
from llmctl.agent.daemon import AgentConfig, run_agent
address, token, log_dir = sys.argv[1:]
run_agent(AgentConfig(address, token, node_name="cpu-box", log_dir=log_dir, telemetry_interval_s=0.5))
"""


def test_run_agent_on_a_host_without_nvml_reports_host_telemetry_and_stops_on_sigterm(
        cluster: Cluster, tmp_path: Path):
    args = [cluster.plane.grpc_address, cluster.plane.join_token, str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        listed = wait_until(lambda: (n := node(cluster, "cpu-box")) and n.HasField("host") and n, 20,
                            "the agent process to register and report")
        # No NVML on this box: host readings, reported as such, and never made-up GPU numbers.
        assert listed.source == pb.TELEMETRY_SOURCE_HOST and len(listed.gpus) == 0
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "llmctl agent: node cpu-box" in output and "Traceback" not in output


def test_restarted_control_plane_adopts_the_running_replica_without_restarting_it(
        cluster: Cluster, ready_replica: ReplicaStatus, api_key: str, caplog):
    caplog.set_level(logging.INFO, logger="llmctl.agent.daemon")
    cluster.restart_plane()
    # The agent notices the closed stream, backs off, registers again and lists its replica in Hello.
    wait_until(lambda: any("1 replica(s) running" in r.getMessage() for r in caplog.records), 20,
               "the agent to reconnect with its replica")
    assert any("closed the agent stream" in r.getMessage() and "retrying in" in r.getMessage()
               for r in caplog.records)
    # Telemetry lives only in memory: the new control plane has some only from the reconnected agent.
    wait_until(lambda: (n := node(cluster, "gpu-1")) and n.HasField("host"), 10,
               "telemetry after the restart")
    time.sleep(1.0)  # a few reconcile rounds: time enough to (wrongly) replace or stop the replica
    deployment = get_deployment(cluster)
    assert deployment.ready_replicas == 1
    assert [r.id for r in deployment.replicas] == [ready_replica.replica_id]
    (status,) = cluster.agent.statuses()
    assert (status.replica_id, status.pid) == (ready_replica.replica_id, ready_replica.pid)
    assert status.restarts == 0
    assert status.state is ReplicaState.READY and cluster.agent.connected
    assert completion(cluster.plane, api_key)["usage"]["completion_tokens"] >= 1


def test_a_frozen_control_plane_is_noticed_by_its_silence_and_the_agent_reconnects(tmp_path: Path):
    # SIGSTOP leaves the control plane's TCP connections open: only the missing pings give it away.
    home = tmp_path / "cp"
    home.mkdir()
    grpc_port = free_port("127.0.0.1")
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "llmctl.controlplane.cli", "server", "--grpc-port", str(grpc_port), "--gateway-port", "0",
         "--database-url", f"sqlite:///{home / 'llmctl.db'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("wb"),
    )
    daemon = None
    try:
        token = wait_until(lambda: (home / "join_token").is_file() and (home / "join_token").read_text().strip(),
                           30, "the join token file")
        daemon = AgentDaemon(AgentConfig(control_plane=f"127.0.0.1:{grpc_port}", join_token=token,
                                         node_name="frozen-test", nvml=fake_gpus(), log_dir=tmp_path / "logs",
                                         max_backoff_s=2.0))
        daemon.start()
        wait_until(lambda: daemon.connected, 30, "the first connection")
        time.sleep(3)  # a ping or two arms the watchdog (heartbeat interval 2 s)
        server.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_until(lambda: not daemon.connected, 20, "the agent to notice the silence")
        noticed = time.monotonic() - frozen_at
        assert noticed < 15  # 3 silent intervals of 2 s + 2 s, with room for a loaded machine (never without pings)
        server.send_signal(signal.SIGCONT)
        try:
            wait_until(lambda: daemon.connected, 30, "the agent to reconnect")
        except AssertionError as e:  # say whether the control plane itself survived, and why not
            log = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{e}; control plane exit code {server.poll()}; its log:\n{log}") from None
    finally:
        server.send_signal(signal.SIGCONT)
        if daemon is not None:
            daemon.stop()
        server.terminate()
        server.wait(timeout=30)
