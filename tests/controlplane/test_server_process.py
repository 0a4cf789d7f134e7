"""run_server as its own process: it says where it listens, serves, and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc

SCRIPT = """
import sys
from pathlib import Path
from llmctl.controlplane.server import ServerConfig, run_server
run_server(ServerConfig(grpc_port=0, gateway_port=0, home=Path(sys.argv[1])))
"""


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_run_server_prints_its_addresses_serves_and_stops_on_a_signal(tmp_path: Path, stop_with: int):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = {}
        while len(lines) < 3:
            line = proc.stdout.readline()
            assert line, f"the server exited early: {proc.stderr.read()}"
            key, _, value = line.strip().partition(" ")
            if key in ("gRPC", "gateway", "database"):
                lines[key] = value.strip()
        assert lines["database"] == f"sqlite:///{tmp_path.resolve() / 'llmctl.db'}"
        assert httpx.get(f"{lines['gateway']}/health", timeout=10).json() == {"status": "ok", "models": []}
        token = (tmp_path / "admin_token").read_text().strip()
        with grpc.insecure_channel(lines["gRPC"]) as channel:
            nodes = pb_grpc.AdminServiceStub(channel).ListNodes(
                pb.ListNodesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        assert list(nodes.nodes) == []

        proc.send_signal(stop_with)
        assert proc.wait(timeout=20) == 0
        assert "stopping the control plane" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
