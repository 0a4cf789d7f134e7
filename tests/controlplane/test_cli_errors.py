"""`llmctl` operator commands fail the way docs/operations.md says, before any control plane is involved."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE", "LLMCTL_JOIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def listener() -> Iterator[tuple[str, list[int]]]:
    """A TCP port that accepts and counts connections: proof of whether a command sent anything."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--block-size", "7"], "block_size must be 8, 16, 32 or 64"),
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1"),
        (["--kv-cache-dtype", "int4"], "kv_cache_dtype must be one of auto, int8, fp8"),
        (["--quantization", "gptq"], "quantization must be one of int8, awq, rtn4"),
        (["--quantization", "awq", "--group-size", "100"], "group size must be 32, 64 or 128"),
        (["--speculative-method", "medusa"], "speculative method must be one of none, ngram, draft, self-int4"),
        (["--speculative-method", "draft"], "--speculative-model names the draft of --speculative-method draft"),
        (["--speculative-method", "ngram", "--num-speculative-tokens", "0"], "num_speculative_tokens must be in"),
        (["--engine-config", "{}", "--ngram-max", "3"], "drop --ngram-max"),
        (["--engine-config", '{"max_num_seqs": "many"}'], "max_num_seqs must be int"),
        (["--engine-config", '{"no_such_knob": 1}'], "unknown engine config keys: no_such_knob"),
        (["--engine-config", "[1]"], "must be a JSON object"),
        (["--engine-config", "{}", "--dtype", "float16"], "drop --dtype"),
    ],
)
def test_invalid_engine_flags_exit_2_before_anything_is_sent(listener, flags, message):
    address, accepted = listener
    code, output = run(
        "deploy",
        "chat",
        "--model",
        "some-model",
        *flags,
        "--control-plane",
        address,
        "--admin-token",
        "t0ken-for-tests",
    )
    assert code == 2, output
    assert output.startswith("error: ") and message in output and output.count("\n") == 1
    assert accepted == []


def test_invalid_deployment_name_exits_2_before_anything_is_sent(listener):
    address, accepted = listener
    code, output = run(
        "deploy", "Chat_Bot", "--model", "m", "--control-plane", address, "--admin-token", "t0ken-for-tests"
    )
    assert code == 2 and "invalid deployment name 'Chat_Bot'" in output
    assert accepted == []


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "chat"],
        ["nodes"],
        ["events"],
        ["tenants", "list"],
        ["revisions", "chat"],
        ["deploy", "chat", "--model", "m"],
        ["scale", "chat", "2"],
        ["rollback", "chat"],
        ["drain", "node-a"],
        ["usage", "acme"],
        ["tenants", "create", "acme"],
    ],
)
def test_unreachable_control_plane_exits_1_naming_it(command):
    address = f"127.0.0.1:{free_port()}"
    code, output = run(*command, "--control-plane", address, "--admin-token", "t0ken-for-tests")
    assert code == 1, output
    assert output.startswith(f"error: control plane at {address} is unreachable")
    assert output.count("\n") == 1 and "Traceback" not in output


def test_control_plane_and_token_defaults_come_from_up_json(home: Path, listener):
    address, accepted = listener
    assert run("nodes")[1].startswith("error: no admin token: pass --admin-token")
    (home / "up.json").write_text(f'{{"control_plane": "127.0.0.1:{free_port()}", "admin_token": "from-up"}}')
    code, output = run("nodes")
    assert code == 1 and "unreachable" in output  # the address from up.json was used
    code, output = run("nodes", "--control-plane", address)
    # The listener is not gRPC: the call fails, but only after connecting to the address given.
    assert code == 1 and accepted


def test_bad_addresses_and_counts_exit_2():
    assert run("nodes", "--control-plane", "localhost", "--admin-token", "x")[0] == 2
    code, output = run("scale", "--control-plane", "127.0.0.1:1", "--admin-token", "x", "chat", "--", "-1")
    assert code == 2 and "replica count must be >= 0" in output
    code, output = run("tenants", "create", "acme", "--rpm", "-5", "--admin-token", "x")
    assert code == 2 and "--rpm must be >= 0" in output
    code, output = run("usage", "acme", "--since", "last tuesday", "--admin-token", "x")
    assert code == 2 and "--since must be a date" in output


def test_help_documents_exit_codes_and_imports_stay_lazy():
    code, output = run("--help")
    assert code == 0 and "Exit codes: 0 done; 2 the request was wrong" in output
    for command in (
        "server",
        "agent",
        "up",
        "down",
        "deploy",
        "rollback",
        "revisions",
        "status",
        "nodes",
        "scale",
        "drain",
        "events",
        "tenants",
        "usage",
        "db",
        "serve",
    ):
        assert f" {command} " in output, command
    # A GPU box that only runs `llmctl serve` must not need the control plane's packages at startup.
    code = (
        "import sys, llmctl.controlplane.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'grpc', 'sqlalchemy', 'torch', 'psutil', 'fastapi'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_control_plane_stopping_mid_call_reads_as_unreachable():
    """gRPC tells the calls in flight on a stopping server UNAVAILABLE "Cancelling all calls"; that is the
    control plane going away, not an answer from it (the dashboard showed the bare gRPC text)."""
    from concurrent import futures

    import grpc

    from llmctl.controlplane.client import AdminClient
    from llmctl.controlplane.errors import Unavailable
    from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc

    answering = threading.Event()

    class Slow(pb_grpc.AdminServiceServicer):
        def ListDeployments(self, request, context):  # noqa: N802 (gRPC's name)
            answering.set()
            threading.Event().wait(10)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AdminServiceServicer_to_server(Slow(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    threading.Thread(target=lambda: (answering.wait(10), server.stop(grace=0)), daemon=True).start()
    with AdminClient(address, "t0ken-for-tests") as client, pytest.raises(Unavailable) as raised:
        client.list_deployments()
    assert str(raised.value).startswith(f"control plane at {address} is unreachable (it stopped while answering)")
