"""`llmctl` operator commands against a real, in-process control plane (gRPC and HTTP on loopback, SQLite).

No agent joins here, so deployments stay unplaced: these tests are about what the commands send, print
and return. Replicas that really serve are covered in test_cli_rollout.py and tests/e2e.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.server import ControlPlane, ServerConfig

ADMIN_TOKEN = "operator-test-admin-token"


@pytest.fixture
def control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE"):
        monkeypatch.delenv(name, raising=False)
    cp = ControlPlane(
        ServerConfig(
            database_url=f"sqlite:///{tmp_path / 'llmctl.db'}",
            grpc_port=0,
            gateway_port=0,
            admin_token=ADMIN_TOKEN,
            join_token="operator-test-join-token",
            home=tmp_path / "cp",
            reconcile_interval_s=0.2,
        )
    )
    cp.start()
    try:
        yield cp
    finally:
        cp.stop(grace_s=1)


def llmctl(cp: ControlPlane, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--control-plane", cp.grpc_address, "--admin-token", token])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def ok_json(cp: ControlPlane, *args: str) -> Any:
    code, output = llmctl(cp, *args, "--output", "json")
    assert code == 0, output
    return json.loads(output)


def test_deploy_revisions_diff_rollback_scale_status_and_events(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = ok_json(cp, "deploy", "chat", "--model", "tiny", "--max-num-seqs", "4", "--no-wait")
    assert (first["revision"], first["created_revision"]) == (1, True)
    assert first["deployment"]["engine_config"]["max_num_seqs"] == 4
    assert first["deployment"]["desired_replicas"] == 1 and first["deployment"]["ready_replicas"] == 0

    second = ok_json(
        cp,
        "deploy",
        "chat",
        "--model",
        "tiny",
        "--max-num-seqs",
        "8",
        "--kv-cache-dtype",
        "int8",
        "--replicas",
        "2",
        "--no-wait",
    )
    assert (second["revision"], second["created_revision"]) == (2, True)
    assert second["deployment"]["desired_replicas"] == 2
    same = ok_json(
        cp,
        "deploy",
        "chat",
        "--model",
        "tiny",
        "--max-num-seqs",
        "8",
        "--kv-cache-dtype",
        "int8",
        "--no-wait",
    )
    assert (same["revision"], same["created_revision"]) == (2, False)
    code, output = llmctl(
        cp,
        "deploy",
        "chat",
        "--model",
        "tiny",
        "--max-num-seqs",
        "8",
        "--kv-cache-dtype",
        "int8",
        "--no-wait",
    )
    assert code == 0 and output == "chat: unchanged at revision 2 (tiny)\n"

    revisions = ok_json(cp, "revisions", "chat")
    assert [(r["number"], r["current"]) for r in revisions["revisions"]] == [(1, False), (2, True)]
    assert revisions["diff"] == {
        "from": 1,
        "to": 2,
        "changes": [
            {"key": "kv_cache_dtype", "from": "auto", "to": "int8"},
            {"key": "max_num_seqs", "from": 4, "to": 8},
        ],
    }
    assert ok_json(cp, "revisions", "chat", "--diff", "2", "1")["diff"]["changes"][1] == {
        "key": "max_num_seqs",
        "from": 8,
        "to": 4,
    }
    code, table = llmctl(cp, "revisions", "chat")
    assert code == 0 and "changes from revision 1 to 2" in table and "max_num_seqs" in table

    rolled = ok_json(cp, "rollback", "chat")
    assert rolled["revision"] == 1 and rolled["engine_config"]["max_num_seqs"] == 4
    assert ok_json(cp, "rollback", "chat", "--to", "2")["revision"] == 2
    assert ok_json(cp, "scale", "chat", "3")["desired_replicas"] == 3

    listed = ok_json(cp, "status")
    assert [(d["name"], d["revision"], d["desired_replicas"]) for d in listed] == [("chat", 2, 3)]
    one = ok_json(cp, "status", "chat")
    assert one["kv_cache_dtype"] == "int8" and one["stats"]["ttft_p95_s"] is None
    code, table = llmctl(cp, "status")
    assert code == 0 and "chat" in table and "0/3" in table

    events = ok_json(cp, "events", "--deployment", "chat")
    kinds = [e["kind"] for e in events]
    assert kinds.count("deployment.deployed") == 2 and kinds.count("deployment.rolled_back") == 2
    assert "deployment.scaled" in kinds
    assert all(e["deployment"] == "chat" for e in events)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert ok_json(cp, "events", "--deployment", "chat", "--limit", "1") == events[-1:]


def test_request_errors_exit_2_with_the_control_planes_message(control_plane: ControlPlane) -> None:
    cp = control_plane
    for command in (["status", "nope"], ["revisions", "nope"], ["rollback", "nope"], ["scale", "nope", "1"]):
        code, output = llmctl(cp, *command)
        assert code == 2, command
        assert output == "error: deployment 'nope' not found; there are no deployments yet\n"
    ok_json(cp, "deploy", "chat", "--model", "tiny", "--no-wait")
    code, output = llmctl(cp, "rollback", "chat")
    assert code == 2 and "there is no earlier revision to roll back to" in output
    code, output = llmctl(cp, "rollback", "chat", "--to", "7")
    assert code == 2 and "has no revision 7" in output
    code, output = llmctl(cp, "status", "--output", "json", token="not-the-admin-token")
    assert code == 2 and "wrong token" in output and output.count("\n") == 1
    ok_json(cp, "tenants", "create", "acme")
    code, output = llmctl(cp, "tenants", "create", "acme")
    assert code == 2 and "tenant 'acme' already exists" in output


def test_deploy_wait_without_any_node_exits_1_saying_why(control_plane: ControlPlane) -> None:
    started = time.monotonic()
    code, output = llmctl(control_plane, "deploy", "chat", "--model", "tiny", "--timeout", "60")
    assert code == 1, output
    assert "no healthy connected node has room" in output and output.strip().splitlines()[-1].startswith(
        "error:"
    )
    assert time.monotonic() - started < 30


def test_tenant_key_is_printed_once_and_works_against_the_gateway(control_plane: ControlPlane) -> None:
    cp = control_plane
    code, output = llmctl(
        cp, "tenants", "create", "acme", "--rpm", "60", "--tpm", "1000", "--monthly-tokens", "500000"
    )
    assert code == 0, output
    key = output.split("API key (shown once, store it now): ")[1].strip()
    models = httpx.get(f"{cp.gateway_url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert models.status_code == 200 and models.json()["object"] == "list"
    wrong = httpx.get(f"{cp.gateway_url}/v1/models", headers={"authorization": f"Bearer {key}x"})
    assert wrong.status_code == 401
    assert ok_json(cp, "tenants", "list") == [
        {
            "name": "acme",
            "rpm": 60,
            "tpm": 1000,
            "monthly_tokens": 500000,
            "quality_opt_out": False,
            "cache_sampled": False,
            "created_at": pytest.approx(time.time(), abs=60),
        }
    ]
    assert key not in llmctl(cp, "tenants", "list")[1]
    assert ok_json(cp, "usage", "acme") == {"tenant": "acme", "since": None, "rows": []}
    code, output = llmctl(cp, "usage", "nobody")
    assert code == 2 and "tenant 'nobody' not found" in output


def _interruptible() -> None:
    """The follower gets Ctrl-C as from a terminal: a child inherits an ignored or blocked SIGINT from its parent,
    and in the full suite the follower once ignored the SIGINT below (it passed alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_events_follow_prints_new_events_as_json_lines(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmctl.controlplane.cli",
            "events",
            "--follow",
            "--output",
            "json",
            "--control-plane",
            cp.grpc_address,
            "--admin-token",
            ADMIN_TOKEN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LLMCTL_HOME": str(tmp_path)},
        preexec_fn=_interruptible,
    )
    try:
        time.sleep(2.0)  # subscribed by now: the deploy below happens while it follows
        ok_json(cp, "deploy", "chat", "--model", "tiny", "--no-wait")
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["kind"] == "deployment.deployed" and first["deployment"] == "chat"
        assert set(first) == {"id", "at", "kind", "deployment", "node", "actor", "message", "details"}
    finally:
        follower.send_signal(signal.SIGINT)
        # communicate, not wait: a follower blocked writing to a full pipe could never exit.
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
