"""`llmctl deploy`'s engine flags against an in-process control plane: flags left at their defaults change
nothing in a revision's engine config, given ones land in it like `--quantization` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.agent.engine.config import EngineConfig
from llmctl.controlplane.cli import app
from tests.controlplane.harness import running_control_plane


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    with running_control_plane(tmp_path) as plane:

        def run(*args: str) -> str:
            result = CliRunner().invoke(
                app, [*args, "--control-plane", plane.grpc_address, "--admin-token", plane.admin_token]
            )
            assert result.exit_code == 0, result.output
            return result.output

        yield run


def test_speculative_flags_land_in_the_revision_and_their_defaults_change_nothing(cli):
    deploy = ("deploy", "chat", "--model", "tiny", "--replicas", "0", "--no-wait")
    assert "rolling out new revision 1" in cli(*deploy)
    assert "unchanged at revision 1" in cli(*deploy)
    # The defaults spelled out are still no change.
    assert "unchanged at revision 1" in cli(*deploy, "--speculative-method", "none", "--num-speculative-tokens", "4")
    assert "rolling out new revision 2" in cli(*deploy, "--speculative-method", "ngram", "--ngram-max", "3")
    listed = json.loads(cli("revisions", "chat", "-o", "json"))
    assert listed["diff"]["changes"] == [
        {"key": "ngram_max", "from": 4, "to": 3},
        {"key": "speculative_method", "from": "none", "to": "ngram"},
    ]
    config = listed["revisions"][-1]["engine_config"]
    assert EngineConfig.from_dict(config) == EngineConfig(model="tiny", speculative_method="ngram", ngram_max=3)
