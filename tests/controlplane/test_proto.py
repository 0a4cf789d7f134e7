"""The wire contract: committed stubs match the .proto, messages survive the wire, the stubs talk gRPC."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from llmctl.agent.fake_nvml import FakeNvml
from llmctl.agent.replicas import ReplicaState
from llmctl.agent.telemetry import GpuProcessReading, GpuReading, HostReading, NvmlTelemetry
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
INCLUDE_ROOT = ROOT / "controlplane"  # the component folder that holds its portion of the llmctl namespace
PROTO = "llmctl/controlplane/proto/llmctl.proto"
STUBS = ("llmctl_pb2.py", "llmctl_pb2.pyi", "llmctl_pb2_grpc.py")


def test_committed_stubs_are_what_the_proto_generates(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", PROTO],
        cwd=INCLUDE_ROOT, check=True, capture_output=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "llmctl/controlplane/proto" / name).read_bytes()
        committed = (INCLUDE_ROOT / "llmctl/controlplane/proto" / name).read_bytes()
        assert fresh == committed, f"{PROTO} stubs: {name} is stale or hand-edited: run scripts/gen_proto.sh"


def roundtrip(message):
    return type(message).FromString(message.SerializeToString())


def test_unset_gpu_readings_stay_absent_and_a_real_zero_stays_present():
    sample = pb.TelemetrySample(
        sent_at=1700000000.5,
        source=pb.TELEMETRY_SOURCE_NVML,
        gpus=[pb.GpuSample(index=0, uuid="GPU-1", name="H100", utilization_percent=0.0,
                           memory_used_bytes=5 << 30, processes=[pb.GpuProcess(pid=42)])],
        host=pb.HostSample(cpu_percent=12.5, memory_used_bytes=1 << 30, memory_total_bytes=8 << 30),
        replicas=[pb.ReplicaStats(replica_id=7, running=0, ttft_p95_s=0.25)],
    )
    back = roundtrip(sample)
    assert back == sample
    gpu = back.gpus[0]
    assert gpu.HasField("utilization_percent") and gpu.utilization_percent == 0.0  # idle, not N/A
    assert not gpu.HasField("power_watts") and not gpu.HasField("temperature_c")  # N/A, not 0
    assert not gpu.processes[0].HasField("used_memory_bytes")
    stats = back.replicas[0]
    assert stats.HasField("running") and stats.running == 0
    assert not stats.HasField("tokens_per_s") and stats.ttft_p95_s == 0.25


def test_agent_and_control_messages_carry_exactly_one_kind():
    hello = pb.AgentMessage(hello=pb.Hello(node_name="gpu-1", replicas=[
        pb.ReplicaStatus(replica_id=3, deployment="chat", revision=2, state=pb.REPLICA_STATE_READY,
                         url="http://10.0.0.1:8001", restarts=1),
    ]))
    back = roundtrip(hello)
    assert back.WhichOneof("kind") == "hello"
    assert back.hello.replicas[0].state == pb.REPLICA_STATE_READY
    start = pb.ControlMessage(start_replica=pb.StartReplica(
        replica_id=1 << 40, deployment="chat", revision=3, model="smollm2-135m",
        engine_config_json='{"kv_cache_dtype": "int8"}', served_model_name="chat"))
    back = roundtrip(start)
    assert back.WhichOneof("kind") == "start_replica" and back.start_replica.replica_id == 1 << 40
    assert roundtrip(pb.ControlMessage(drain=pb.DrainNode(reason="maintenance"))).drain.reason == "maintenance"


def test_admin_optionals_distinguish_unset_from_zero():
    keep = roundtrip(pb.DeployRequest(name="chat", model="m", engine_config_json="{}"))
    assert not keep.HasField("replicas")  # keep the current count
    zero = roundtrip(pb.DeployRequest(name="chat", model="m", engine_config_json="{}", replicas=0))
    assert zero.HasField("replicas") and zero.replicas == 0  # scale to zero
    assert not roundtrip(pb.RollbackRequest(name="chat")).HasField("to_revision")
    reg = roundtrip(pb.RegisterRequest(node_name="n", capabilities={"triton": "3.1", "fp8": "yes"}))
    assert dict(reg.capabilities) == {"triton": "3.1", "fp8": "yes"}


def test_agent_dataclasses_convert_to_proto_field_by_field():
    # The daemon converts by field name; a renamed field on either side must fail here, not in production.
    for cls, message in ((GpuReading, pb.GpuSample), (GpuProcessReading, pb.GpuProcess),
                         (HostReading, pb.HostSample)):
        assert {f.name for f in dataclasses.fields(cls)} == set(message.DESCRIPTOR.fields_by_name)
    registration = NvmlTelemetry(FakeNvml.uniform(1)).gpu_info()[0]
    assert set(registration) == set(pb.GpuInfo.DESCRIPTOR.fields_by_name)
    assert pb.GpuInfo(**registration).memory_total_bytes == registration["memory_total_bytes"]
    for state in ReplicaState:
        assert pb.ReplicaState.Name(pb.ReplicaState.Value(f"REPLICA_STATE_{state.value}")) == \
            f"REPLICA_STATE_{state.value}"


class _EchoAgentService(pb_grpc.AgentServiceServicer):
    """Just enough of a server to prove the generated stubs speak gRPC, with auth metadata."""

    def Register(self, request, context):
        token = dict(context.invocation_metadata()).get("x-llmctl-join-token")
        if token != "join-secret":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong join token")
        return pb.RegisterResponse(node_name=request.node_name, heartbeat_interval_s=2.5)

    def Connect(self, request_iterator, context):
        for message in request_iterator:
            if message.WhichOneof("kind") == "hello":
                for status in message.hello.replicas:
                    yield pb.ControlMessage(stop_replica=pb.StopReplica(replica_id=status.replica_id, drain=True))


@pytest.fixture
def channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AgentServiceServicer_to_server(_EchoAgentService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(grace=None)


def test_stubs_carry_unary_and_bidi_calls_with_metadata(channel):
    stub = pb_grpc.AgentServiceStub(channel)
    reply = stub.Register(pb.RegisterRequest(node_name="gpu-1"), metadata=[("x-llmctl-join-token", "join-secret")],
                          timeout=10)
    assert (reply.node_name, reply.heartbeat_interval_s) == ("gpu-1", 2.5)
    with pytest.raises(grpc.RpcError) as err:
        stub.Register(pb.RegisterRequest(node_name="gpu-1"), metadata=[("x-llmctl-join-token", "nope")], timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    hello = pb.AgentMessage(hello=pb.Hello(node_name="gpu-1", replicas=[pb.ReplicaStatus(replica_id=5)]))
    replies = list(stub.Connect(iter([hello]), timeout=10))
    assert [(r.WhichOneof("kind"), r.stop_replica.replica_id) for r in replies] == [("stop_replica", 5)]
