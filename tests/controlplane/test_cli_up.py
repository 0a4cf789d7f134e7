"""`llmctl up --detach` and `llmctl down` as a user runs them: real processes, the tiny model, loopback."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.commands.up_state import alive
from tests.e2e.conftest import free_port, processes_under, wait_until

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
        assert down.returncode == 0 and "stopped supervisor" in down.stdout, (
            down.stdout + down.stderr + (home / "up.json").read_text() + (home / "logs" / "up.log").read_text()[-4000:])
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


# -- faults under `llmctl up --detach`: one stack for the module, killed piece by piece -------------------
RECOVER_S = 120.0
"""Bound on a restarted child serving again (the server restarts in about 5 s here, a replica in 10-20 s)."""


@pytest.fixture(scope="module")
def detached_up(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Path]:
    """`llmctl up --detach` with the tiny model; `llmctl down` afterwards must leave nothing running."""
    root = tmp_path_factory.mktemp("up-faults")
    home = root / "home"
    up = ["up", "--detach", "--model", str(tiny_llama), "--name", "tiny",
          "--gateway-port", str(free_port()), "--grpc-port", str(free_port())]
    try:
        done = llmctl(home, *up)
        assert done.returncode == 0, done.stderr
        yield home
        down = llmctl(home, "down", timeout=120)
        assert down.returncode == 0, down.stderr
        assert processes_under(root) == []
    finally:
        leftovers = processes_under(root)
        for process in leftovers:
            process.kill()
        psutil.wait_procs(leftovers, timeout=10)


def chat(state: dict[str, Any]) -> int | None:
    """The gateway's status code for a small chat completion; None when it does not answer."""
    try:
        return httpx.post(
            f"{state['gateway_url']}/v1/chat/completions",
            timeout=30,
            trust_env=False,
            headers={"authorization": f"Bearer {state['api_key']}"},
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        ).status_code
    except httpx.TransportError:
        return None


def replica_pids(agent_pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(agent_pid).children(recursive=True) if "serve" in p.cmdline()}


def restarted(home: Path, name: str, old_pid: int) -> dict[str, Any] | None:
    """up.json once it names a new, live `name` process; None before."""
    state = json.loads((home / "up.json").read_text())
    pid = state["pids"].get(name)
    return state if pid not in (None, old_pid) and alive(pid) else None


def test_killed_server_restarts_while_agent_and_replica_keep_serving(
    detached_up: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = detached_up
    before = json.loads((home / "up.json").read_text())
    server, agent = before["pids"]["server"], before["pids"]["agent"]
    replicas = replica_pids(agent)
    assert replicas and chat(before) == 200

    killed_at = time.monotonic()
    os.kill(server, signal.SIGKILL)
    wait_until("the gateway serves again on the same port", lambda: chat(before) == 200, RECOVER_S, 0.2)
    print(f"gateway unavailable for {time.monotonic() - killed_at:.1f} s after kill -9 of the server")

    after = wait_until("up.json names the new server", lambda: restarted(home, "server", server), 10)
    assert after["pids"]["agent"] == agent and replica_pids(agent) == replicas  # never stopped
    # The agent reconnects on its own backoff (agent/daemon.py) and its Hello hands the replicas over.
    agent_log = home / "logs" / "agent.log"
    hello = f"connected to the control plane at {before['control_plane']} (node local, {len(replicas)} replica(s)"
    wait_until("the agent reconnects with its replicas", lambda: hello in agent_log.read_text(), 30)
    print(f"agent reconnected {time.monotonic() - killed_at:.1f} s after the kill")
    assert after["state"] == "ready" and after["pids"]["supervisor"] == before["pids"]["supervisor"]
    assert after["restarts"]["server"]["count"] == 1
    assert after["restarts"]["server"]["last_exit"] == "killed by SIGKILL"
    log = (home / "logs" / "up.log").read_text()
    assert f"the server (pid {server}) exited (killed by SIGKILL); restarting it in 1 s" in log

    monkeypatch.setenv("LLMCTL_HOME", str(home))
    shown = CliRunner().invoke(app, ["ps", "--output", "json"])
    assert shown.exit_code == 0, shown.output
    processes = {p["name"]: p for p in json.loads(shown.stdout)["processes"]}
    assert processes["server"] == {
        "name": "server",
        "pid": after["pids"]["server"],
        "state": "running",
        "restarts": 1,
        "last_exit": "killed by SIGKILL",
        "last_exit_at": after["restarts"]["server"]["last_exit_at"],
    }
    assert processes["agent"]["restarts"] == 0 and processes["agent"]["pid"] == agent
    status = CliRunner().invoke(app, ["status", "tiny", "--output", "json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["ready_replicas"] >= 1, status.output
    assert replica_pids(agent) == replicas  # adopted, not replaced


def test_killed_agent_restarts_and_its_replica_comes_back_with_the_server_untouched(
    detached_up: Path,
) -> None:
    home = detached_up
    before = json.loads((home / "up.json").read_text())
    server, agent = before["pids"]["server"], before["pids"]["agent"]
    replicas = replica_pids(agent)
    assert replicas

    killed_at = time.monotonic()
    os.kill(agent, signal.SIGKILL)
    after = wait_until("up.json names the new agent", lambda: restarted(home, "agent", agent), 30)
    wait_until("the gateway serves again", lambda: chat(before) == 200, RECOVER_S, 0.5)
    print(f"gateway failed requests for {time.monotonic() - killed_at:.1f} s after kill -9 of the agent")

    assert after["pids"]["server"] == server and alive(server)
    assert after["restarts"]["agent"]["count"] == 1
    assert after["restarts"]["agent"]["last_exit"] == "killed by SIGKILL"
    # The old replicas died with their agent (PR_SET_PDEATHSIG); the new agent runs new ones.
    assert not any(alive(pid) for pid in replicas)
    assert replica_pids(after["pids"]["agent"])
