"""`llmctl cache NAME --semantic ...` end to end: CLI -> AdminService -> SQL -> reconciler -> the gateway's
semantic table; off by default, refused when out of range, audited as an event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.gateway.semantic_cache import DEFAULT_THRESHOLD
from llmctl.controlplane.server import ControlPlane
from tests.controlplane.cli_plane import ADMIN_TOKEN, llmctl, running_control_plane
from tests.controlplane.harness import wait_for


@pytest.fixture
def control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path, monkeypatch, response_cache_mb=1) as cp:
        yield cp



def ok_json(cp: ControlPlane, *args: str) -> Any:
    code, output = llmctl(cp, *args, "--output", "json")
    assert code == 0, output
    return json.loads(output)


def test_the_semantic_cache_is_set_per_deployment_and_reaches_the_gateway(control_plane: ControlPlane) -> None:
    cp = control_plane
    ok_json(cp, "deploy", "chat", "--model", "tiny", "--replicas", "0", "--no-wait")
    ok_json(cp, "deploy", "other", "--model", "tiny", "--replicas", "0", "--no-wait")
    assert cp.semantic.threshold("chat") is None  # off by default

    assert ok_json(cp, "cache", "chat", "--semantic", "0.97") == {"name": "chat", "semantic_cache_threshold": 0.97,
                                                                  "warning": None}
    wait_for(lambda: cp.semantic.threshold("chat") == 0.97, what="the gateway to learn the threshold")
    assert cp.semantic.threshold("other") is None

    code, output = llmctl(cp, "cache", "chat", "--semantic", "on")
    assert code == 0 and output.strip() == f"chat: semantic cache on at similarity {DEFAULT_THRESHOLD:g}"
    wait_for(lambda: cp.semantic.threshold("chat") == DEFAULT_THRESHOLD, what="the default threshold")

    assert ok_json(cp, "cache", "chat", "--semantic", "off")["semantic_cache_threshold"] is None
    wait_for(lambda: cp.semantic.threshold("chat") is None, what="the cache to turn off")
    events = [e for e in ok_json(cp, "events", "--deployment", "chat") if e["kind"] == "deployment.semantic_cache"]
    assert [e["message"] for e in events][-3:] == ["chat: semantic cache on at similarity 0.97",
                                                   f"chat: semantic cache on at similarity {DEFAULT_THRESHOLD:g}",
                                                   "chat: semantic cache off"]


def test_a_threshold_out_of_range_or_an_unknown_deployment_is_refused(control_plane: ControlPlane) -> None:
    cp = control_plane
    ok_json(cp, "deploy", "chat", "--model", "tiny", "--replicas", "0", "--no-wait")
    for value in ("1.5", "0", "-0.2", "maybe"):
        code, output = llmctl(cp, "cache", "chat", "--semantic", value)
        assert code == 2 and "--semantic must be on, off or a similarity in (0, 1]" in output, output
    code, output = llmctl(cp, "cache", "nope", "--semantic", "on")
    assert code != 0 and "deployment 'nope' not found" in output
    assert cp.semantic.threshold("chat") is None


def test_turning_it_on_without_a_response_cache_warns_that_it_stays_unused(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with running_control_plane(tmp_path, monkeypatch) as cp:  # no --response-cache-mb: no exact cache
        ok_json(cp, "deploy", "chat", "--model", "tiny", "--replicas", "0", "--no-wait")
        result = CliRunner().invoke(app, ["cache", "chat", "--semantic", "on", "--control-plane", cp.grpc_address,
                                          "--admin-token", ADMIN_TOKEN])
        assert result.exit_code == 0 and result.stdout.strip() == (
            f"chat: semantic cache on at similarity {DEFAULT_THRESHOLD:g}")
        assert "warning: this control plane's gateway runs without a response cache" in result.stderr
        assert "--response-cache-mb" in result.stderr
        assert "without a response cache" in ok_json(cp, "cache", "chat", "--semantic", "0.9")["warning"]
        assert ok_json(cp, "cache", "chat", "--semantic", "off")["warning"] is None  # off needs no cache
