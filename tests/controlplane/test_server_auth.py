"""Who may call the control plane (admin and join tokens), and how service errors reach gRPC clients."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import grpc
import pytest

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.server import ControlPlane, ServerConfig
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    with running_control_plane(tmp_path_factory.mktemp("auth")) as plane:
        yield plane


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("token", [None, "not-the-admin-token"])
def test_admin_calls_without_the_admin_token_are_unauthenticated(plane: ControlPlane, token: str | None):
    admin = Admin(plane.grpc_address, token)
    try:
        code, details = code_and_details(lambda: admin.ListDeployments(pb.ListDeploymentsRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "admin token" in details
        # Streaming calls are guarded the same way.
        code, _ = code_and_details(lambda: list(admin.WatchEvents(pb.WatchEventsRequest(), timeout=5)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # The agents' token is not an admin token.
        admin.metadata = (("authorization", f"Bearer {plane.join_token}"),)
        code, _ = code_and_details(lambda: admin.ListNodes(pb.ListNodesRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        admin.close()


@pytest.mark.parametrize("token", ["", "wrong-join-token"])
def test_agents_without_the_join_token_cannot_register_or_connect(plane: ControlPlane, token: str):
    agent = ScriptedAgent(plane, "intruder", token=token)
    try:
        code, details = code_and_details(agent.register)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "join token" in details
        agent.connect(heartbeats=False)
        wait_for(agent.stream_ended.is_set, what="the refused stream to end")
        assert agent.commands.empty()
        with Admin(plane.grpc_address, plane.admin_token) as admin:
            assert "intruder" not in [n.name for n in admin.ListNodes(pb.ListNodesRequest()).nodes]
    finally:
        agent.close()


def test_a_stream_must_register_first_and_open_with_hello(plane: ControlPlane):
    channel = grpc.insecure_channel(plane.grpc_address)
    stub = pb_grpc.AgentServiceStub(channel)
    metadata = (("x-llmctl-join-token", plane.join_token),)
    try:
        hello = pb.AgentMessage(hello=pb.Hello(node_name="never-registered"))
        code, details = code_and_details(
            lambda: list(stub.Connect(iter([hello]), metadata=metadata, timeout=5)))
        assert code == grpc.StatusCode.NOT_FOUND and "call Register before Connect" in details
        beat = pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at=1.0))
        code, details = code_and_details(
            lambda: list(stub.Connect(iter([beat]), metadata=metadata, timeout=5)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be Hello" in details
        bad = pb.RegisterRequest(node_name="Bad_Name", hostname="h", max_replicas=1)
        code, details = code_and_details(lambda: stub.Register(bad, metadata=metadata, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid node name 'Bad_Name'" in details
    finally:
        channel.close()


def test_service_errors_arrive_with_their_status_code_and_message(plane: ControlPlane):
    with Admin(plane.grpc_address, plane.admin_token) as admin:
        code, details = code_and_details(lambda: admin.GetDeployment(pb.GetDeploymentRequest(name="nope")))
        assert code == grpc.StatusCode.NOT_FOUND and "deployment 'nope' not found" in details
        code, details = code_and_details(lambda: admin.deploy("errors", max_num_seqs=0))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_num_seqs must be >= 1" in details
        code, details = code_and_details(lambda: admin.Deploy(
            pb.DeployRequest(name="errors", model="m", engine_config_json="{not json")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not valid JSON" in details
        admin.deploy("errors", replicas=0)
        code, details = code_and_details(lambda: admin.Rollback(pb.RollbackRequest(name="errors")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no earlier revision" in details
        admin.CreateTenant(pb.CreateTenantRequest(name="acme"))
        code, details = code_and_details(lambda: admin.CreateTenant(pb.CreateTenantRequest(name="acme")))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "tenant 'acme' already exists" in details


def test_a_concurrent_change_to_the_same_deployment_is_aborted(tmp_path: Path):
    """One writer per deployment: a call working from a copy another writer has since changed gets ABORTED."""
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("contended", replicas=0)
        other = sqlite3.connect(tmp_path / "llmctl.db", isolation_level=None, timeout=15)
        other.execute("BEGIN IMMEDIATE")  # the other writer holds the write lock ...
        outcome: dict[str, object] = {}

        def scale() -> None:
            try:
                outcome["reply"] = admin.Scale(pb.ScaleRequest(name="contended", replicas=2))
            except grpc.RpcError as e:
                outcome["error"] = e

        thread = threading.Thread(target=scale)
        thread.start()
        time.sleep(1.5)  # the server reads the row at once, then waits for SQLite's write lock
        assert thread.is_alive(), f"the Scale call should be waiting for the write lock, got {outcome}"
        # ... and commits its change while the Scale call waits to write its own.
        other.execute("UPDATE deployments SET version = version + 1 WHERE name = 'contended'")
        other.execute("COMMIT")
        other.close()
        thread.join(20)
        error = outcome.get("error")
        assert isinstance(error, grpc.RpcError), f"expected ABORTED, got {outcome}"
        assert error.code() == grpc.StatusCode.ABORTED
        assert "was changed by another call at the same time; re-read and retry" in error.details()
        # A retry from a fresh read goes through.
        assert admin.Scale(pb.ScaleRequest(name="contended", replicas=2)).desired_replicas == 2


def test_tokens_are_created_once_private_and_reused(tmp_path: Path):
    with running_control_plane(tmp_path) as first:
        admin_token, join_token = first.admin_token, first.join_token
    for name, token in (("admin_token", admin_token), ("join_token", join_token)):
        path = tmp_path / name
        assert path.read_text().strip() == token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_token != join_token
    with running_control_plane(tmp_path) as second:
        assert (second.admin_token, second.join_token) == (admin_token, join_token)


def test_tokens_given_explicitly_are_used_and_not_written(tmp_path: Path):
    with running_control_plane(tmp_path, admin_token="admin-secret-1", join_token="join-secret-1") as plane:
        assert (plane.admin_token, plane.join_token) == ("admin-secret-1", "join-secret-1")
        with Admin(plane.grpc_address, "admin-secret-1") as admin:
            assert admin.ListNodes(pb.ListNodesRequest()).nodes == []
    assert not (tmp_path / "admin_token").exists() and not (tmp_path / "join_token").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("grpc_port", 70000, "grpc_port must be a port number"),
    ("node_timeout_s", 0, "node_timeout_s must be a positive number"),
    ("node_timeout_s", 3.0, "must exceed two heartbeat intervals"),
])
def test_bad_server_settings_are_refused_with_what_to_change(field: str, value: object, message: str):
    with pytest.raises(InvalidArgument, match=message):
        ServerConfig(**{field: value})


def test_a_weak_admin_token_is_refused_before_anything_listens(tmp_path: Path):
    plane = ControlPlane(ServerConfig(home=tmp_path, grpc_port=0, gateway_port=0, admin_token="short"))
    with pytest.raises(InvalidArgument, match="admin token must be at least 8 characters"):
        plane.start()
