"""A real control plane on loopback ports for CLI tests (SQLite file, gRPC and gateway on free ports), and
`llmctl` invoked in-process against it, the way an operator's shell would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.server import ControlPlane, ServerConfig

ADMIN_TOKEN = "cli-test-admin-token"


@contextmanager
def running_control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Iterator[ControlPlane]:
    """Started, then stopped; the operator's own environment (home, token, address) is kept out. `config`:
    more ServerConfig fields."""
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "operator"))
    for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE"):
        monkeypatch.delenv(name, raising=False)
    cp = ControlPlane(ServerConfig(database_url=f"sqlite:///{tmp_path / 'llmctl.db'}", grpc_port=0, gateway_port=0,
                                   admin_token=ADMIN_TOKEN, join_token="cli-test-join-token", home=tmp_path / "cp",
                                   reconcile_interval_s=0.2, **config))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop(grace_s=1)


def llmctl(cp: ControlPlane, *args: str) -> tuple[int, str]:
    """(exit code, stdout on success else everything printed)."""
    result = CliRunner().invoke(app, [*args, "--control-plane", cp.grpc_address, "--admin-token", ADMIN_TOKEN])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output
