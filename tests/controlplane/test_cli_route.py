"""`llmctl route` against a real control plane (gRPC on loopback, SQLite): set, show, replace and remove a
deployment's model route; what the gateway is handed; the routes it refuses, with exit code 2 and what to fix;
deleting a companion deletes the route; and, end to end, the control plane's own gateway routing to real
engine replicas that an agent reported ready."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.server import ControlPlane
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for
from tests.factories import serve_app

ADMIN_TOKEN = "route-test-admin-token"


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    with running_control_plane(tmp_path / "cp", admin_token=ADMIN_TOKEN) as cp, \
            Admin(cp.grpc_address, ADMIN_TOKEN) as admin:
        for name in ("big", "small", "other"):
            admin.deploy(name, replicas=0)
        yield cp


def llmctl(cp: ControlPlane, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--control-plane", cp.grpc_address, "--admin-token", ADMIN_TOKEN])
    return result.exit_code, " ".join(result.output.split())


def published(cp: ControlPlane, deployment: str = "big"):
    return cp.model_routes.get(deployment)


def test_a_route_is_set_shown_replaced_and_removed(plane: ControlPlane):
    assert llmctl(plane, "route", "big") == (0, "big: no route; the deployment serves every request")
    code, out = llmctl(plane, "route", "big", "--to", "small", "--rule", "max-prompt-tokens=200")
    assert code == 0, out
    assert out == ("big: requests matching max-prompt-tokens=200 go to small (saturated at its engine's "
                   "max_num_seqs per replica; failing or saturated, big serves them)")
    route = wait_for(lambda: published(plane), what="the route to reach the gateway")
    assert (route.companion, str(route.rule), route.max_in_flight) == ("small", "max-prompt-tokens=200", 64)

    code, out = llmctl(plane, "route", "big", "--to", "small", "--rule", "regex=(?i)^(hi|thanks)", "--max-in-flight",
                       "3", "-o", "json")
    assert code == 0 and json.loads(out) == {"deployment": "big", "companion": "small",
                                             "rule": "regex=(?i)^(hi|thanks)", "max_in_flight": 3}
    wait_for(lambda: published(plane).max_in_flight == 3, what="the replaced route")
    assert "requests matching regex=(?i)^(hi|thanks) go to small (saturated at 3 per replica" in \
        llmctl(plane, "route", "big")[1]

    assert llmctl(plane, "route", "big", "--off")[0] == 0
    wait_for(lambda: published(plane) is None, what="the route to leave the gateway")
    assert "no route" in llmctl(plane, "route", "big")[1]
    with Admin(plane.grpc_address, ADMIN_TOKEN) as admin:
        kinds = [e.kind for e in admin.events(deployment="big")]
        assert kinds.count("deployment.route_set") == 2 and kinds.count("deployment.route_cleared") == 1
        audit = admin.ListAudit(pb.ListAuditRequest()).entries
        assert [a.target for a in audit if a.rpc == "SetModelRoute"][-1] == \
            "deployment/big companion=small rule=max-prompt-tokens=200"


@pytest.mark.parametrize("args, words", [
    (["--to", "big", "--rule", "classifier"], "cannot be its own companion"),
    (["--to", "nowhere", "--rule", "classifier"], "deployment 'nowhere' not found"),
    (["--to", "small", "--rule", "regex=(oops"], "does not compile"),
    (["--to", "small", "--rule", "max-prompt-tokens=-1"], "between 1 and"),
    (["--to", "small", "--rule", "shortish"], "unknown rule 'shortish'"),
    (["--to", "small"], "needs both --to SMALL and --rule"),
    (["--to", "small", "--rule", "classifier", "--max-in-flight", "0"], "--max-in-flight must be >= 1"),
    (["--off", "--to", "small"], "--off removes the route"),
])
def test_a_route_that_cannot_work_is_refused_with_exit_2(plane: ControlPlane, args, words):
    code, out = llmctl(plane, "route", "big", *args)
    assert code == 2 and words in out, out
    assert "no route" in llmctl(plane, "route", "big")[1]


def test_an_unknown_deployment_is_refused(plane: ControlPlane):
    code, out = llmctl(plane, "route", "nowhere", "--to", "small", "--rule", "classifier")
    assert code == 2 and "deployment 'nowhere' not found" in out


def test_routes_are_never_chained(plane: ControlPlane):
    assert llmctl(plane, "route", "big", "--to", "small", "--rule", "classifier")[0] == 0
    code, out = llmctl(plane, "route", "small", "--to", "other", "--rule", "classifier")
    assert code == 2 and "'small' is the companion of 'big'" in out and "llmctl route big --off" in out
    code, out = llmctl(plane, "route", "other", "--to", "big", "--rule", "classifier")
    assert code == 2 and "'big' routes to 'small' itself" in out


def test_deleting_the_companion_deletes_the_route(plane: ControlPlane):
    assert llmctl(plane, "route", "big", "--to", "small", "--rule", "classifier")[0] == 0
    wait_for(lambda: published(plane), what="the route")
    with Admin(plane.grpc_address, ADMIN_TOKEN) as admin:
        admin.DeleteDeployment(pb.DeleteDeploymentRequest(name="small"))
    wait_for(lambda: published(plane) is None, what="the route to go with its companion")
    assert "no route" in llmctl(plane, "route", "big")[1]


def test_the_control_planes_gateway_routes_once_the_route_is_set(plane: ControlPlane, tiny_llama: Path):
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    config = EngineConfig(model=str(tiny_llama), dtype="float32", max_model_len=512, num_kv_blocks=64)
    with serve_app(build_app(AsyncEngine.from_config(config), "big")) as big, \
            serve_app(build_app(AsyncEngine.from_config(config), "small")) as small, \
            Admin(plane.grpc_address, ADMIN_TOKEN) as admin:
        agent = ScriptedAgent(plane, "a").join()
        admin.Scale(pb.ScaleRequest(name="big", replicas=1))
        admin.Scale(pb.ScaleRequest(name="small", replicas=1))
        for _ in range(2):
            start = agent.start_replica()
            agent.serve(start, url={"big": big, "small": small}[start.deployment])
        wait_for(lambda: plane.routes.models() == ["big", "small"], what="both replicas to be routable")
        key = admin.CreateTenant(pb.CreateTenantRequest(name="acme")).api_key

        def ask(text: str) -> httpx.Response:
            r = httpx.post(f"{plane.gateway_url}/v1/chat/completions", timeout=60,
                           headers={"authorization": f"Bearer {key}"},
                           json={"model": "big", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text
            return r

        assert ask("hi").json()["model"] == "big"
        assert llmctl(plane, "route", "big", "--to", "small", "--rule", "max-prompt-tokens=20")[0] == 0
        wait_for(lambda: published(plane), what="the route")
        routed = ask("hi")
        assert routed.json()["model"] == "small" and routed.headers["x-llmctl-routed-to"] == "small"
        assert ask("Explain, with the reasoning written out, why the sky looks blue at noon and red at dusk, "
                   "and what that says about scattering.").json()["model"] == "big"
        metrics = httpx.get(f"{plane.gateway_url}/metrics").text
        assert 'llmctl_gateway_route_decisions_total{decision="companion",deployment="big",rule="max-prompt-tokens"} 1.0' \
            in metrics
        agent.close()
