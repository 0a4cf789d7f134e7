"""`llmctl deploy --wait`, `nodes` and `drain` with a real agent: an in-process control plane and an
AgentDaemon (FakeNvml at the NVML edge) whose replicas are real `llmctl serve` processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.agent.fake_nvml import GIB, FakeGpu, FakeNvml
from llmctl.controlplane.cli import app
from llmctl.controlplane.server import ControlPlane, ServerConfig

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "rollout-test-admin-token"
# Sampling off: this test counts the node's slots, and a quality scorer replica would take one.
ENGINE = ["--threads", "1", "--num-kv-blocks", "32", "--max-model-len", "128", "--quality-sample-rate", "0"]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    cp = ControlPlane(
        ServerConfig(
            database_url=f"sqlite:///{tmp_path / 'llmctl.db'}",
            grpc_port=0,
            gateway_port=0,
            admin_token=ADMIN_TOKEN,
            home=tmp_path / "cp",
            reconcile_interval_s=0.2,
            heartbeat_interval_s=0.5,
            rollout_timeout_s=25,
        )
    )
    cp.start()
    gpu = FakeGpu(
        name="NVIDIA L4",
        memory_total_bytes=24 * GIB,
        memory_used_bytes=3 * GIB,
        utilization_percent=42,
        unsupported={"power"},
    )
    agent = AgentDaemon(
        AgentConfig(
            control_plane=cp.grpc_address,
            join_token=cp.join_token,
            node_name="gpu-a",
            nvml=FakeNvml([gpu]),
            log_dir=tmp_path / "replicas",
            telemetry_interval_s=0.5,
            max_backoff_s=1.0,
            max_replicas=2,
        )
    )
    agent.start()
    try:
        yield cp
    finally:
        agent.stop()
        cp.stop(grace_s=1)


def llmctl(cp: ControlPlane, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, [*args, "--control-plane", cp.grpc_address, "--admin-token", ADMIN_TOKEN]
    )
    return result.exit_code, result.output


def json_of(cp: ControlPlane, *args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--output", "json", "--control-plane", cp.grpc_address, "--admin-token", ADMIN_TOKEN]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def eventually(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert value, "condition not met in time"
    return value


def test_deploy_waits_for_ready_a_broken_revision_fails_and_a_full_node_is_reported(
    fleet: ControlPlane, tiny_llama: Path
) -> None:
    cp = fleet

    def gpu_reported() -> Any:
        found = json_of(cp, "nodes")
        return (
            found and found[0]["gpus"] and found[0]["gpus"][0]["utilization_percent"] is not None and found[0]
        )

    node = eventually(gpu_reported)
    assert (node["name"], node["state"], node["source"]) == ("gpu-a", "healthy", "NVML")
    gpu = node["gpus"][0]
    assert (gpu["name"], gpu["utilization_percent"], gpu["memory_used_bytes"]) == ("NVIDIA L4", 42, 3 * GIB)
    assert gpu["power_watts"] is None  # unsupported on this GPU: reported as absent, never as 0
    code, table = llmctl(cp, "nodes")
    assert code == 0 and "gpu-a" in table and "NVIDIA L4 42%" in table

    code, output = llmctl(cp, "deploy", "chat", "--model", str(tiny_llama), *ENGINE)
    assert code == 0, output
    assert "chat: revision 1 ready on 1 replica(s)" in output
    status = json_of(cp, "status", "chat")
    (replica,) = status["replicas"]
    assert (replica["state"], replica["node"], replica["revision"]) == ("READY", "gpu-a", 1)
    key = json_of(cp, "tenants", "create", "acme")["api_key"]
    answer = httpx.post(
        f"{cp.gateway_url}/v1/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "chat", "prompt": "Paged attention", "max_tokens": 4},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0

    code, output = llmctl(cp, "deploy", "chat", "--model", str(tiny_llama.parent / "no-such-model"), *ENGINE)
    assert code == 1, output
    error = output.strip().splitlines()[-1]
    assert (
        error.startswith("error: rollout of chat revision 2 failed") and "rolling back to revision 1" in error
    )
    assert "unknown model" in error  # the replica's own error, from its log
    assert json_of(cp, "status", "chat")["revision"] == 1
    code, _ = llmctl(cp, "status", "chat")
    assert code == 0

    # The node has two slots: scaling to three places one more, then waiting cannot help.
    code, output = llmctl(cp, "scale", "chat", "3", "--wait", "--timeout", "120")
    assert code == 1, output
    error = output.strip().splitlines()[-1]
    assert error.startswith("error: no healthy connected node has room") and "chat" in error
    status = json_of(cp, "status", "chat")
    assert (status["desired_replicas"], status["ready_replicas"]) == (3, 2)

    drained = json_of(cp, "drain", "gpu-a")
    assert drained["state"] == "draining"
