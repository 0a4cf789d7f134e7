"""`llmctl autoscale` against a real control plane (gRPC on loopback, SQLite): set, show, merge, refuse, the
one-writer rule seen from `llmctl scale`, history, and the autoscaler's series on /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.server import ControlPlane, ServerConfig

ADMIN_TOKEN = "autoscale-test-admin-token"


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    cp = ControlPlane(ServerConfig(database_url=f"sqlite:///{tmp_path / 'llmctl.db'}", grpc_port=0, gateway_port=0,
                                   admin_token=ADMIN_TOKEN, home=tmp_path / "cp", reconcile_interval_s=0.2))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop(grace_s=1)


def llmctl(cp: ControlPlane, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--control-plane", cp.grpc_address, "--admin-token", ADMIN_TOKEN])
    return result.exit_code, " ".join(result.output.split())


def test_autoscale_sets_shows_merges_and_takes_the_count_from_manual_scaling(plane: ControlPlane, tiny_llama: Path):
    code, out = llmctl(plane, "deploy", "chat", "--model", str(tiny_llama), "--quality-sample-rate", "0", "--no-wait")
    assert code == 0, out
    assert "no autoscaling policy" in llmctl(plane, "autoscale", "chat")[1]

    code, out = llmctl(plane, "autoscale", "chat", "--min", "1", "--max", "3", "--scale-up-window", "0",
                       "--scale-down-window", "2m", "--target-queue", "2")
    assert code == 0, out
    assert "autoscaling on: 1-3 replicas, target queue 2, KV usage 0.6, up after 0s, down after 120s" in out

    code, out = llmctl(plane, "scale", "chat", "2")
    assert code == 2 and "is autoscaled between 1 and 3" in out and "llmctl autoscale chat --off" in out

    code, out = llmctl(plane, "autoscale", "chat", "--advisory", "--target-kv-usage", "off")
    assert code == 0 and "autoscaling advisory: 1-3 replicas, target queue 2, up after 0s" in out  # the rest kept
    assert llmctl(plane, "scale", "chat", "2")[0] == 0  # advisory only watches

    code, out = llmctl(plane, "status", "chat")
    assert "autoscaling advisory: 1-3 replicas" in out
    status = json.loads(CliRunner().invoke(app, ["status", "chat", "--output", "json", "--control-plane",
                                                 plane.grpc_address, "--admin-token", ADMIN_TOKEN]).stdout)
    assert status["autoscaling"]["mode"] == "advisory" and status["autoscaling"]["target_kv_usage"] is None

    code, out = llmctl(plane, "revisions", "chat")
    assert code == 0 and "autoscaling advisory: 1-3 replicas" in out

    code, out = llmctl(plane, "autoscale", "history", "chat")
    assert code == 0 and "no decisions yet" in out


@pytest.mark.parametrize("args, words", [
    (["--min", "5", "--max", "2"], "min <= max"),
    (["--target-kv-usage", "1.5"], "KV usage must be in (0, 1]"),
    (["--scale-up-window", "soon"], "--scale-up-window takes a duration"),
    (["--advisory", "--off"], "choose one of --on, --advisory and --off"),
])
def test_a_policy_that_cannot_work_is_refused_with_exit_2(plane: ControlPlane, tiny_llama: Path, args, words):
    llmctl(plane, "deploy", "chat", "--model", str(tiny_llama), "--quality-sample-rate", "0", "--no-wait")
    code, out = llmctl(plane, "autoscale", "chat", *args)
    assert code == 2 and words in out
    assert "no autoscaling policy" in llmctl(plane, "autoscale", "chat")[1]


def test_an_unknown_deployment_is_named_in_the_error(plane: ControlPlane):
    code, out = llmctl(plane, "autoscale", "nope", "--max", "2")
    assert code == 2 and "deployment 'nope' not found" in out


def test_the_autoscalers_evaluation_is_on_metrics(plane: ControlPlane, tiny_llama: Path):
    llmctl(plane, "deploy", "chat", "--model", str(tiny_llama), "--quality-sample-rate", "0", "--no-wait")
    llmctl(plane, "autoscale", "chat", "--min", "1", "--max", "2")
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{plane.gateway_url}/metrics", timeout=5).text
        if 'llmctl_autoscaler_recommended_replicas{deployment="chat",mode="on",signal="no data"} 1.0' in text:
            break
        assert time.monotonic() < deadline, "no autoscaler series on /metrics"
        time.sleep(0.2)
    code, out = llmctl(plane, "autoscale", "chat")
    assert "now: 1 replica(s), the policy wants 1 (holding at 1: no fresh reading from a ready replica" in out
