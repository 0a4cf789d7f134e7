"""`llmctl up --detach` and `llmctl down` as a user runs them: real processes, the tiny model, loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from tests.e2e.conftest import free_port, processes_under

pytestmark = pytest.mark.slow


def llmctl(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl.controlplane.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LLMCTL_HOME": str(home)},
    )


def test_up_detach_serves_and_down_leaves_nothing_running(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    gateway_port, grpc_port = free_port(), free_port()
    up = [
        "up",
        "--detach",
        "--model",
        str(tiny_llama),
        "--name",
        "tiny",
        "--gateway-port",
        str(gateway_port),
        "--grpc-port",
        str(grpc_port),
    ]
    try:
        done = llmctl(home, *up)
        assert done.returncode == 0, done.stderr
        state = json.loads((home / "up.json").read_text())
        assert stat.S_IMODE((home / "up.json").stat().st_mode) == 0o600
        assert state["state"] == "ready" and state["gateway_url"] == f"http://127.0.0.1:{gateway_port}"
        assert state["control_plane"] == f"127.0.0.1:{grpc_port}"
        assert state["admin_token"] == (home / "admin_token").read_text().strip()
        assert state["api_key"] in done.stdout and state["admin_token"] in done.stdout
        assert set(state["pids"]) == {"supervisor", "server", "agent"}
        assert all(psutil.pid_exists(pid) for pid in state["pids"].values())

        answer = httpx.post(
            f"{state['gateway_url']}/v1/chat/completions",
            timeout=60,
            headers={"authorization": f"Bearer {state['api_key']}"},
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert answer.status_code == 200, answer.text
        # Operator commands find the control plane and the admin token through up.json.
        monkeypatch.setenv("LLMCTL_HOME", str(home))
        monkeypatch.delenv("LLMCTL_ADMIN_TOKEN", raising=False)
        status = CliRunner().invoke(app, ["status", "tiny", "--output", "json"])
        assert status.exit_code == 0 and json.loads(status.stdout)["ready_replicas"] == 1

        again = llmctl(home, *up)
        assert again.returncode == 2 and "already up" in again.stderr

        down = llmctl(home, "down", timeout=120)
        assert down.returncode == 0 and "stopped supervisor" in down.stdout
        assert processes_under(tmp_path) == []
        state = json.loads((home / "up.json").read_text())
        assert state["pids"] == {} and state["state"] == "stopped" and state["api_key"]
        assert llmctl(home, "down").stdout.startswith("llmctl is not up")

        # The next `up` keeps the tenant's key: it was shown once and lives only in up.json.
        key = state["api_key"]
        assert llmctl(home, *up).returncode == 0
        assert json.loads((home / "up.json").read_text())["api_key"] == key
        assert llmctl(home, "down", timeout=120).returncode == 0
        assert processes_under(tmp_path) == []
    finally:
        leftovers = processes_under(tmp_path)
        for process in leftovers:
            process.kill()
        psutil.wait_procs(leftovers, timeout=10)
