"""TLS and mutual TLS on real listeners (loopback): a control plane with a certificate and a client CA, real
agent daemons with and without certificates, llmctl over TLS, the gateway over HTTPS, plaintext warnings, and
`llmctl up --tls` as a user runs it. NVML is the only fake."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.agent.fake_nvml import FakeNvml
from llmctl.controlplane import pki
from llmctl.controlplane.cli import app
from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.errors import InvalidArgument, Unavailable
from llmctl.controlplane.server import ControlPlane
from llmctl.controlplane.tls import ClientTls, ServerTls, is_loopback
from tests.controlplane.harness import running_control_plane, wait_for
from tests.e2e.conftest import free_port, processes_under

NO_GPU = dict(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)


@dataclass
class Fleet:
    plane: ControlPlane
    pki: pki.LocalPki
    stranger: pki.CertFiles
    """A client certificate named like a real agent, signed by another CA."""

    def operator(self) -> ClientTls:
        return ClientTls(ca=self.pki.ca, cert=self.pki.admin.cert, key=self.pki.admin.key)

    def admin(self) -> AdminClient:
        return AdminClient(self.plane.grpc_address, self.plane.admin_token, timeout_s=5, tls=self.operator())

    def agent(self, tmp_path: Path, name: str, tls: ClientTls | None) -> AgentDaemon:
        return AgentDaemon(AgentConfig(self.plane.grpc_address, self.plane.join_token, node_name=name, tls=tls,
                                       log_dir=tmp_path / name, max_backoff_s=0.5, nvml=FakeNvml(**NO_GPU)))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("tls")
    made = pki.local_pki(folder, agent="gpu-1")
    other = tmp_path_factory.mktemp("other-ca")
    pki.init_ca(other)
    stranger = pki.issue_client(other, "gpu-1")
    tls = ServerTls(made.server.cert, made.server.key, client_ca=made.ca)
    with running_control_plane(tmp_path_factory.mktemp("home"), tls=tls) as plane:
        yield Fleet(plane, made, stranger)


def test_an_agent_with_a_certificate_from_the_fleet_ca_joins_over_mutual_tls(fleet: Fleet, tmp_path: Path):
    agent = fleet.agent(tmp_path, "gpu-1", ClientTls(fleet.pki.ca, fleet.pki.agent.cert, fleet.pki.agent.key))
    agent.start()
    try:
        wait_for(lambda: agent.connected, 15, "the agent to connect")
        with fleet.admin() as admin:
            nodes = wait_for(lambda: [n for n in admin.list_nodes() if n.name == "gpu-1"], 10, "node gpu-1")
        assert nodes[0].state == "healthy"
    finally:
        agent.stop()


def test_agents_without_a_fleet_certificate_are_refused_at_the_handshake_and_the_server_keeps_serving(
        fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
    caplog.set_level(logging.INFO, logger="llmctl.agent.daemon")
    ca = fleet.pki.ca
    refused = {
        "no-cert": ClientTls(ca=ca),
        "stranger": ClientTls(ca=ca, cert=fleet.stranger.cert, key=fleet.stranger.key),
        "plaintext": None,
    }
    agents = {name: fleet.agent(tmp_path, name, tls) for name, tls in refused.items()}
    for agent in agents.values():
        agent.start()
    try:
        def failures() -> int:
            return sum("cannot register with" in r.getMessage() for r in caplog.records)

        wait_for(lambda: failures() >= 2 * len(agents), 20, "the refused agents to fail registering, twice each")
        assert not any(agent.connected for agent in agents.values())
        hints = [r.getMessage() for r in caplog.records if "TLS handshake may have failed" in r.getMessage()]
        assert hints, "an agent with TLS settings should hint at the handshake"
        with fleet.admin() as admin:  # the server still serves callers that hold a fleet certificate
            assert not {n.name for n in admin.list_nodes()} & set(refused)
    finally:
        for agent in agents.values():
            agent.stop()
    # gRPC logs each refused handshake on the server's stderr, saying why.
    logged = capfd.readouterr().err
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in logged  # no certificate
    assert "CERTIFICATE_VERIFY_FAILED" in logged  # a certificate from another CA
    assert "WRONG_VERSION_NUMBER" in logged  # plaintext to a TLS port


def test_llmctl_reaches_a_mutual_tls_control_plane_with_its_certificate_and_explains_a_refusal(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))  # no up.json to fall back on
    for name in ("LLMCTL_CA", "LLMCTL_CERT", "LLMCTL_KEY"):
        monkeypatch.delenv(name, raising=False)
    runner, made = CliRunner(), fleet.pki
    where = ["--control-plane", fleet.plane.grpc_address, "--admin-token", fleet.plane.admin_token]
    done = runner.invoke(app, ["--ca", str(made.ca), "--cert", str(made.admin.cert), "--key", str(made.admin.key),
                               "nodes", *where, "-o", "json"])
    assert done.exit_code == 0, done.output
    assert isinstance(json.loads(done.stdout), list)
    env = {"LLMCTL_CA": str(made.ca), "LLMCTL_CERT": str(made.admin.cert), "LLMCTL_KEY": str(made.admin.key)}
    assert runner.invoke(app, ["status", *where], env=env).exit_code == 0

    no_cert = runner.invoke(app, ["--ca", str(made.ca), "nodes", *where])
    assert no_cert.exit_code == 1 and "refused the TLS handshake" in no_cert.output
    plaintext = runner.invoke(app, ["nodes", *where])
    assert plaintext.exit_code == 1 and "it may want TLS: pass --ca" in plaintext.output
    half = runner.invoke(app, ["--ca", str(made.ca), "--cert", str(made.admin.cert), "nodes", *where])
    assert half.exit_code == 2 and "pass both --cert and --key" in half.output


def test_the_gateway_serves_https_with_the_fleet_ca_and_refuses_plain_http(fleet: Fleet):
    url = fleet.plane.gateway_url
    assert url.startswith("https://127.0.0.1:")
    answer = httpx.get(f"{url}/health", verify=ClientTls(ca=fleet.pki.ca).ssl_context(), timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/health", timeout=10)  # the system's roots do not know the fleet's CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url.replace('https://', 'http://')}/health", timeout=10)


def test_plaintext_on_a_non_loopback_address_warns_and_on_loopback_does_not(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="llmctl.controlplane")
    with running_control_plane(tmp_path / "open", grpc_host="0.0.0.0", gateway_host="0.0.0.0"):
        pass
    warned = [r.getMessage() for r in caplog.records if "in plaintext" in r.getMessage()]
    assert any(m.startswith("gRPC listens on 0.0.0.0 in plaintext") for m in warned), warned
    assert any(m.startswith("the gateway listens on 0.0.0.0 in plaintext") for m in warned), warned
    assert all("--tls-cert" in m for m in warned)
    caplog.clear()
    with running_control_plane(tmp_path / "local"):
        pass
    assert not [r for r in caplog.records if "in plaintext" in r.getMessage()]
    # An agent dialling another host in plaintext warns as well (192.0.2.1: TEST-NET, nothing answers).
    agent = AgentDaemon(AgentConfig("192.0.2.1:50051", "join-token", node_name="far", log_dir=tmp_path / "agent",
                                    nvml=FakeNvml(**NO_GPU)))
    agent.start()
    agent.stop()
    assert any("control plane at 192.0.2.1:50051 in plaintext" in r.getMessage() for r in caplog.records)


def test_tls_settings_are_checked_before_anything_listens(tmp_path: Path):
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "cp.example")] == [False] * 4
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(InvalidArgument, match="--tls-cert .*: no such file"):
        ServerTls(tmp_path / "missing.crt", tmp_path / "not.pem")
    with pytest.raises(InvalidArgument, match="--tls-cert .* is not a PEM file"):
        ServerTls(tmp_path / "not.pem", tmp_path / "not.pem")
    with pytest.raises(InvalidArgument, match="needs its key"):
        ClientTls(cert=tmp_path / "not.pem")
    made = pki.local_pki(tmp_path / "tls")
    with pytest.raises(InvalidArgument, match="are not a certificate and its key"):
        ServerTls(made.server.cert, made.agent.key)
    with pytest.raises(InvalidArgument, match="are not a certificate and its key"):
        ClientTls(made.ca, made.agent.cert, made.admin.key)
    done = CliRunner().invoke(app, ["server", "--client-ca", str(tmp_path / "not.pem")])
    assert done.exit_code == 2 and "mutual TLS is TLS first" in done.output


@pytest.mark.slow
def test_up_tls_runs_the_local_stack_on_mutual_tls_and_llmctl_finds_it(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    gateway_port, grpc_port = free_port(), free_port()

    def llmctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmctl.controlplane.cli", *args], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "LLMCTL_HOME": str(home)})

    try:
        done = llmctl("up", "--detach", "--tls", "--model", str(tiny_llama), "--name", "tiny",
                      "--gateway-port", str(gateway_port), "--grpc-port", str(grpc_port))
        assert done.returncode == 0, done.stderr
        state = json.loads((home / "up.json").read_text())
        tls = home / "tls"
        assert state["gateway_url"] == f"https://127.0.0.1:{gateway_port}"
        assert state["tls"] == {"ca": str(tls / "ca.crt"), "cert": str(tls / "admin.crt"),
                                "key": str(tls / "admin.key")}
        assert f"--cacert {tls / 'ca.crt'}" in done.stdout
        assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in tls.glob("*.key"))
        assert "client certificates from" in (home / "logs" / "server.log").read_text()

        context = ClientTls(ca=tls / "ca.crt").ssl_context()
        answer = httpx.post(f"{state['gateway_url']}/v1/chat/completions", verify=context, timeout=60,
                            headers={"authorization": f"Bearer {state['api_key']}"},
                            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                  "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gateway_port}/health", timeout=10)
        # The agent joined with its certificate; llmctl finds the CA and its own certificate through up.json.
        monkeypatch.setenv("LLMCTL_HOME", str(home))
        for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE", "LLMCTL_CA", "LLMCTL_CERT", "LLMCTL_KEY"):
            monkeypatch.delenv(name, raising=False)
        nodes = CliRunner().invoke(app, ["nodes", "-o", "json"])
        assert nodes.exit_code == 0, nodes.output
        assert [(n["name"], n["state"]) for n in json.loads(nodes.stdout)] == [("local", "healthy")]
        with pytest.raises(Unavailable):  # and nothing gets in without a certificate
            with AdminClient(state["control_plane"], state["admin_token"], timeout_s=5,
                             tls=ClientTls(ca=tls / "ca.crt")) as client:
                client.list_nodes()
        down = llmctl("down")
        assert down.returncode == 0 and "stopped supervisor" in down.stdout, (
            down.stdout + down.stderr + (home / "up.json").read_text() + (home / "logs" / "up.log").read_text()[-4000:])
        assert processes_under(tmp_path) == []
    finally:
        for process in processes_under(tmp_path):
            process.kill()
