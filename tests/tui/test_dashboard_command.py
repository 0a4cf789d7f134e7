"""`llmctl dashboard`'s edge: where the control plane is and the admin token, resolved like every operator
command, and bad values refused with one line and exit code 2 before any screen opens."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmctl.controlplane.commands import dashboard


@pytest.fixture
def llmctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE"):
        monkeypatch.delenv(name, raising=False)
    app = typer.Typer()
    dashboard.register(app)
    app.command("noop", hidden=True)(lambda: None)  # two commands, so `dashboard` is addressed by name
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--control-plane", "nohost", "--admin-token", "t"], "--control-plane must be HOST:PORT"),
        (["--control-plane", "h:99999", "--admin-token", "t"], "--control-plane must be HOST:PORT"),
        (["--control-plane", "h:1"], "no admin token: pass --admin-token"),
        (["--admin-token", "t", "--refresh", "0"], "--refresh must be between 0.1 and 3600 seconds"),
    ],
)
def test_bad_flags_exit_2_with_one_line(llmctl: typer.Typer, args: list[str], message: str) -> None:
    result = CliRunner().invoke(llmctl, ["dashboard", *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
