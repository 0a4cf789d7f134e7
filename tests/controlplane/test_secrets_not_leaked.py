"""No secret reaches a log line, an event, an audit row, a stored row or an error message.

One run through everything that handles a secret: a real agent daemon joining (first with a mistyped join
token), a tenant created with `llmctl`, chats through the gateway to a real engine replica with the right
key, a mistyped key and none, admin calls with a wrong token, both tokens rotated with `llmctl tokens rotate`
and the rotation finished, calls with the retired tokens. Every log record at DEBUG (SQLAlchemy's statements
and their parameters included), every row of every table, every file under the control plane's home (the
secret files themselves aside) and every error a client got is then searched for each secret.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import httpx
import pytest
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.agent.fake_nvml import FakeNvml
from llmctl.controlplane.cli import app
from llmctl.controlplane.db.session import make_engine
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.harness import Admin, ScriptedAgent, running_control_plane, wait_for
from tests.factories import make_tiny_llama, serve_app

SECRET_FILES = {"admin_token", "join_token", "admin_token.previous", "join_token.previous", "api_key_secret"}


def no_nvml() -> FakeNvml:
    return FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)


def llmctl(plane, *args: str, token: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--control-plane", plane.grpc_address,
                                      *(("--admin-token", token) if token else ())])
    return result.exit_code, result.output


def mistyped(token: str) -> str:
    return token[:-4] + ("abcd" if not token.endswith("abcd") else "wxyz")


def every_stored_value(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return "\n".join(str(row) for table in inspect(engine).get_table_names()
                             for row in connection.execute(text(f'SELECT * FROM "{table}"')))
    finally:
        engine.dispose()


def test_no_secret_in_logs_events_audit_rows_or_error_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # SQLAlchemy keeps its own loggers at WARNING
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LLMCTL_HOME", str(home))  # `llmctl` finds the admin token here, as an operator's would
    monkeypatch.delenv("LLMCTL_ADMIN_TOKEN", raising=False)
    model = make_tiny_llama(tmp_path / "tiny")
    engine = AsyncEngine.from_config(EngineConfig(model=str(model), dtype="float32", max_model_len=256,
                                                  num_kv_blocks=64))
    secrets: dict[str, str] = {}
    errors: list[str] = []  # every error message or error body a client was shown
    with serve_app(build_app(engine, "chat")) as replica_url, running_control_plane(home) as plane:
        secrets |= {"admin token": plane.admin_token, "join token": plane.join_token,
                    "API key secret": (home / "api_key_secret").read_text().strip(),
                    "mistyped join token": mistyped(plane.join_token),
                    "mistyped admin token": mistyped(plane.admin_token)}

        refused = AgentDaemon(AgentConfig(plane.grpc_address, secrets["mistyped join token"], node_name="typo",
                                          max_backoff_s=0.5, log_dir=tmp_path / "typo", nvml=no_nvml()))
        refused.start()
        wait_for(lambda: "refused this agent's join token" in caplog.text, what="the mistyped join token refused")
        refused.stop()
        edge = AgentDaemon(AgentConfig(plane.grpc_address, plane.join_token, node_name="edge", max_replicas=0,
                                       log_dir=tmp_path / "edge", telemetry_interval_s=0.5, nvml=no_nvml()))
        edge.start()
        gpu = ScriptedAgent(plane, "gpu", max_replicas=1).join()
        try:
            wait_for(lambda: edge.connected, what="the agent daemon to connect")
            code, out = llmctl(plane, "tenants", "create", "acme", "-o", "json")
            assert code == 0, out
            secrets["API key"] = key = json.loads(out)["api_key"]
            secrets["API key without its prefix"] = key[12:]
            secrets["mistyped API key"] = mistyped(key)
            with Admin(plane.grpc_address, plane.admin_token) as admin:
                admin.deploy("chat", replicas=1)
            gpu.serve(gpu.start_replica(), url=replica_url)

            chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            gateway = httpx.Client(base_url=plane.gateway_url, timeout=60)

            def answered() -> bool:
                reply = gateway.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
                return reply.status_code == 200

            wait_for(answered, timeout=30, what="the gateway to answer with the tenant's key")
            for headers in ({"Authorization": f"Bearer {secrets['mistyped API key']}"},
                            {"Authorization": secrets["mistyped API key"]}, {}):
                reply = gateway.post("/v1/chat/completions", json=chat, headers=headers)
                assert reply.status_code == 401
                errors.append(reply.text)
            gateway.close()

            wrong = Admin(plane.grpc_address, secrets["mistyped admin token"])
            with pytest.raises(grpc.RpcError) as refused_call:
                wrong.Scale(pb.ScaleRequest(name="chat", replicas=2))
            errors.append(refused_call.value.details())
            wrong.close()
            code, out = llmctl(plane, "nodes", token=secrets["mistyped admin token"])
            assert code == 2
            errors.append(out)

            for kind in ("join", "admin"):
                code, out = llmctl(plane, "tokens", "rotate", kind, "--grace", "10m", "-o", "json")
                assert code == 0, out
                secrets[f"new {kind} token"] = json.loads(out)["token"]  # shown to the operator, once, by design
            for kind in ("join", "admin"):
                code, out = llmctl(plane, "tokens", "rotate", kind, "--finish")
                assert code == 0, out
            code, out = llmctl(plane, "nodes", token=secrets["admin token"])
            assert code == 2 and "wrong token" in out
            errors.append(out)
            assert edge.connected  # joined with the retired join token, still connected
            code, out = llmctl(plane, "audit", "-o", "json")
            assert code == 0 and len(json.loads(out)) >= 6
            errors.append(out)  # not an error, but the operator sees it: it must be as clean
            database_url = plane.database_url
        finally:
            gpu.close()
            edge.stop()

    searched = {
        "log records": caplog.text,
        "stored rows (events, audit, api_keys, ...)": every_stored_value(database_url),
        "errors shown to clients": "\n".join(errors),
        "files": "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*")
                           if p.is_file() and p.name not in SECRET_FILES and p.suffix in ("", ".log", ".json")),
    }
    assert "SELECT" in caplog.text and "refused" in caplog.text  # really DEBUG, really the whole run
    leaks = [f"the {what} in the {where}" for what, value in secrets.items() for where, haystack in searched.items()
             if value in haystack]
    assert not leaks, leaks


def test_a_logged_server_config_shows_no_secret() -> None:
    from llmctl.controlplane.server import ServerConfig

    config = ServerConfig(admin_token="admin-secret-1", join_token="join-secret-1", api_key_secret="hmac-secret-1")
    assert not {"admin-secret-1", "join-secret-1", "hmac-secret-1"} & set(repr(config).replace("'", " ").split())
    assert "secret-1" not in repr(config)
