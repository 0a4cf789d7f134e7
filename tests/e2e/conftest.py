"""End-to-end fixtures: real `llmctl` processes on loopback, always cleaned up, and checked to be gone.

Every process a test starts gets LLMCTL_HOME under the test's tmp_path, and the replicas the agents
start inherit it; that is how the teardown finds everything that must be gone, even processes that
were re-parented when their agent was killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

STOP_GRACE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail the test naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"not within {timeout_s:g} s: {what} (last seen: {last!r})")


def processes_under(root: Path) -> list[psutil.Process]:
    """Live processes whose LLMCTL_HOME lies under `root` (ours, and the replicas they started)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("LLMCTL_HOME", "").startswith(str(root)):
                found.append(process)
        except psutil.Error:
            continue
    return found


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, wait, SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class Processes:
    """Starts `llmctl ...` subprocesses with logs under tmp_path; the fixture stops them all."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def llmctl(
        self, name: str, *args: str, home: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it for its whole life
        process = subprocess.Popen(
            [sys.executable, "-m", "llmctl.controlplane.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LLMCTL_HOME": str(home), **(env or {})},
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        for process in reversed(procs.started):
            stop(process)
        leftovers = processes_under(tmp_path)
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=10)
        assert not leftovers, f"processes outlived the test: {[p.pid for p in leftovers]}"


class Cli:
    """Runs `llmctl` operator commands in-process against one control plane, as an operator would."""

    def __init__(self, control_plane: str, admin_token: str):
        self.control_plane, self.admin_token = control_plane, admin_token

    def __call__(self, *args: str, expect: int = 0) -> str:
        from llmctl.controlplane.cli import app

        result = CliRunner().invoke(
            app, [*args, "--control-plane", self.control_plane, "--admin-token", self.admin_token]
        )
        assert result.exit_code == expect, f"llmctl {' '.join(args)} -> {result.exit_code}: {result.output}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output", "json"))

    def try_json(self, *args: str) -> Any:
        """The command's JSON, or None when it fails (e.g. the control plane is still starting)."""
        from llmctl.controlplane.cli import app

        result = CliRunner().invoke(
            app,
            [
                *args,
                "--output",
                "json",
                "--control-plane",
                self.control_plane,
                "--admin-token",
                self.admin_token,
            ],
        )
        return json.loads(result.stdout) if result.exit_code == 0 else None
