"""Rotating the admin and join tokens on a running control plane: nobody is locked out while they switch."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.errors import InvalidArgument, Unauthenticated
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane


def registers(plane, name: str, token: str) -> bool:
    agent = ScriptedAgent(plane, name, token=token)
    try:
        agent.register()
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        return False
    finally:
        agent.close()


def admin_works(plane, token: str) -> bool:
    with AdminClient(plane.grpc_address, token) as client:
        try:
            client.list_nodes()
            return True
        except Unauthenticated:
            return False


def test_rotating_tokens_keeps_connected_agents_and_old_tokens_working_until_finished(tmp_path: Path) -> None:
    with running_control_plane(tmp_path) as plane:
        old_admin, old_join = plane.admin_token, plane.join_token
        connected = ScriptedAgent(plane, "connected").join()
        try:
            with AdminClient(plane.grpc_address, old_admin) as client:
                join = client.rotate_token("join", grace_s=600)
                admin = client.rotate_token("admin", grace_s=600)
            new_join, new_admin = join.token, admin.token
            assert new_join not in ("", old_join) and new_admin not in ("", old_admin)
            assert (tmp_path / "join_token").read_text().strip() == new_join
            assert (tmp_path / "admin_token").read_text().strip() == new_admin
            assert join.token_file == str(tmp_path / "join_token") and join.previous_valid_until > 0

            # During the grace period both tokens work, for agents joining and for operators.
            assert registers(plane, "old-token", old_join) and registers(plane, "new-token", new_join)
            assert admin_works(plane, old_admin) and admin_works(plane, new_admin)

            with AdminClient(plane.grpc_address, new_admin) as client:
                client.rotate_token("join", finish=True)
                client.rotate_token("admin", finish=True)
            assert not registers(plane, "late", old_join) and registers(plane, "late", new_join)
            assert not admin_works(plane, old_admin) and admin_works(plane, new_admin)

            # The agent that joined with the first join token is still connected and still gets commands.
            with Admin(plane.grpc_address, new_admin) as client:
                client.DrainNode(pb.DrainNodeRequest(name="old-token"))
                client.DrainNode(pb.DrainNodeRequest(name="new-token"))
                client.DrainNode(pb.DrainNodeRequest(name="late"))
                client.deploy("chat", replicas=1)
            assert connected.start_replica().deployment == "chat"
            assert not connected.stream_ended.is_set()
        finally:
            connected.close()


def test_a_restart_during_the_grace_period_keeps_the_previous_token(tmp_path: Path) -> None:
    with running_control_plane(tmp_path) as plane:
        old_join = plane.join_token
        with AdminClient(plane.grpc_address, plane.admin_token) as client:
            new_join = client.rotate_token("join", grace_s=600).token
    with running_control_plane(tmp_path) as plane:
        assert plane.join_token == new_join
        assert registers(plane, "old", old_join) and registers(plane, "new", new_join)


def test_tokens_given_explicitly_are_not_rotated_by_the_control_plane(tmp_path: Path) -> None:
    with running_control_plane(tmp_path, join_token="explicit-join-token") as plane:
        with AdminClient(plane.grpc_address, plane.admin_token) as client:
            with pytest.raises(InvalidArgument, match="given explicitly"):
                client.rotate_token("join")
            with pytest.raises(InvalidArgument, match="kind must be one of"):
                client.rotate_token("root")
        assert registers(plane, "still", "explicit-join-token")


def test_llmctl_tokens_rotate_with_no_grace_switches_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    monkeypatch.delenv("LLMCTL_ADMIN_TOKEN", raising=False)
    with running_control_plane(tmp_path) as plane:
        old_join = plane.join_token
        result = CliRunner().invoke(app, ["tokens", "rotate", "join", "--grace", "0", "-o", "json",
                                          "--control-plane", plane.grpc_address])
        assert result.exit_code == 0, result.output
        reply = json.loads(result.output)
        assert reply["kind"] == "join" and reply["previous_valid_until"] is None
        assert reply["token"] == plane.join_token != old_join
        assert not registers(plane, "old", old_join) and registers(plane, "new", reply["token"])
        # The operator's next command reads the rotated admin token from $LLMCTL_HOME, as before.
        result = CliRunner().invoke(app, ["tokens", "rotate", "admin", "--control-plane", plane.grpc_address])
        assert result.exit_code == 0 and "the previous admin token works until" in result.output
        assert plane.admin_token in result.output
        result = CliRunner().invoke(app, ["nodes", "--control-plane", plane.grpc_address])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(app, ["tokens", "rotate", "join", "--grace", "soon",
                                          "--control-plane", plane.grpc_address])
        assert result.exit_code == 2 and "--grace must be a duration" in result.output
