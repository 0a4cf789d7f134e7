"""Every admin call that changes something is audited: who, what, when and how it ended, failures included."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.db.models import utcnow
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.rpc.audit import READS, WRITES
from llmctl.controlplane.services.audit import list_audit, record_audit
from llmctl.controlplane.tokens import fingerprint
from tests.controlplane.harness import Admin, running_control_plane


def test_every_admin_rpc_is_either_audited_or_a_read() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["AdminService"].methods}
    assert set(WRITES) | READS == methods and not set(WRITES) & READS


def audit_json(plane, *flags: str) -> list[dict]:
    result = CliRunner().invoke(app, ["audit", "-o", "json", "--control-plane", plane.grpc_address,
                                      "--admin-token", plane.admin_token, *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_admin_changes_are_audited_with_caller_target_and_result(tmp_path: Path) -> None:
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("chat", replicas=0)
        with pytest.raises(grpc.RpcError):  # fails: there is no earlier revision
            admin.Rollback(pb.RollbackRequest(name="chat"))
        with pytest.raises(grpc.RpcError):
            admin.Scale(pb.ScaleRequest(name="nope", replicas=0))
        admin.ListDeployments(pb.ListDeploymentsRequest())  # a read: not audited
        intruder = Admin(plane.grpc_address, "not-the-admin-token")
        with pytest.raises(grpc.RpcError):
            intruder.DeleteDeployment(pb.DeleteDeploymentRequest(name="chat"))
        intruder.close()
        admin.CreateTenant(pb.CreateTenantRequest(name="acme", rpm=60))

        entries = audit_json(plane)
        assert [(e["rpc"], e["target"], e["result"]) for e in entries] == [
            ("CreateTenant", "tenant/acme rpm=60", "ok"),
            ("DeleteDeployment", "deployment/chat", "UNAUTHENTICATED"),
            ("Scale", "deployment/nope replicas=0", "NOT_FOUND"),
            ("Rollback", "deployment/chat", "INVALID_ARGUMENT"),
            ("Deploy", "deployment/chat model=tiny replicas=0", "ok"),
        ]
        me = f"admin-token:{fingerprint(plane.admin_token)}"
        assert [e["actor"] for e in entries] == [me, "wrong token", me, me, me]
        assert "no earlier revision" in entries[3]["message"]
        assert "deployment 'nope' not found" in entries[2]["message"]
        assert "admin token" in entries[1]["message"] and "not-the-admin-token" not in json.dumps(entries)
        assert all(e["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) for e in entries)
        assert all(abs(e["at"] - time.time()) < 60 for e in entries)
        assert plane.admin_token not in json.dumps(entries)

        assert [e["rpc"] for e in audit_json(plane, "--limit", "2")] == ["CreateTenant", "DeleteDeployment"]
        assert audit_json(plane, "--since", "2099-01-01") == []
        assert len(audit_json(plane, "--since", "1h")) == 5
        table = CliRunner().invoke(app, ["audit", "--control-plane", plane.grpc_address,
                                         "--admin-token", plane.admin_token])
        assert table.exit_code == 0 and "NOT_FOUND:" in table.output and "UNAUTHENTICATED:" in table.output


def test_rotating_a_token_is_audited_without_the_token(tmp_path: Path) -> None:
    with running_control_plane(tmp_path) as plane, Admin(plane.grpc_address, plane.admin_token) as admin:
        old = plane.admin_token
        reply = admin.RotateToken(pb.RotateTokenRequest(kind="join", grace_s=60))
        entries = audit_json(plane)
        assert [(e["rpc"], e["target"], e["result"], e["actor"]) for e in entries] == [
            ("RotateToken", "token/join grace_s=60.0", "ok", f"admin-token:{fingerprint(old)}")]
        assert reply.token not in json.dumps(entries)
        assert [e.kind for e in admin.events("token.rotated")] == ["token.rotated"]


def test_audit_rows_list_newest_first_since_a_time(db_factory: sessionmaker[Session]) -> None:
    now = utcnow()
    with session_scope(db_factory) as session:
        for minutes, rpc in ((30, "Deploy"), (20, "Scale"), (10, "Rollback")):
            record_audit(session, actor="admin-token:0123abcd", peer="ipv4:127.0.0.1:1", rpc=rpc,
                         target="deployment/chat", result="ok", at=now - timedelta(minutes=minutes))
    with session_scope(db_factory) as session:
        assert [r.rpc for r in list_audit(session)] == ["Rollback", "Scale", "Deploy"]
        assert [r.rpc for r in list_audit(session, since=now - timedelta(minutes=25))] == ["Rollback", "Scale"]
        assert [r.rpc for r in list_audit(session, limit=1)] == ["Rollback"]


def test_audit_rows_keep_what_callers_sent_even_a_nul(db_factory: sessionmaker[Session]) -> None:
    # PostgreSQL text cannot hold NUL; a hostile name must still leave its audit row.
    with session_scope(db_factory) as session:
        record_audit(session, actor="wrong token", peer="ipv4:127.0.0.1:1", rpc="Scale",
                     target="deployment/a\x00b", result="INVALID_ARGUMENT", message="invalid name 'a\x00b'")
    with session_scope(db_factory) as session:
        (row,) = list_audit(session)
        assert (row.target, row.message) == ("deployment/a\\x00b", "invalid name 'a\\x00b'")
