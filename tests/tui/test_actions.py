"""Deploy, roll back, scale and drain from the dashboard against a live control plane: nothing is sent
before the operator confirms, a bad form never leaves the screen, and every action ends with what the
control plane did or its error."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from textual.widgets import Input

from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.server import ControlPlane
from llmctl.tui.dialogs.confirm import ConfirmDialog
from llmctl.tui.dialogs.deploy_form import DeployForm
from llmctl.tui.dialogs.rollback import RollbackDialog
from llmctl.tui.dialogs.scale import ScaleDialog
from llmctl.tui.screens.fleet import FleetScreen
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.result_line import ResultLine
from tests.controlplane.harness import ScriptedAgent
from tests.tui.conftest import SIZE, live_app, screen_text, serving_agent, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def edge(plane: ControlPlane) -> Iterator[ScriptedAgent]:
    agent = serving_agent(plane)
    with AdminClient(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("chat", "tiny", {"max_num_seqs": 4}, replicas=1)
        admin.deploy("chat", "tiny", {"max_num_seqs": 8})
    try:
        yield agent
    finally:
        agent.close()


def result(app) -> str:
    return app.screen.query_one(ResultLine).text


def admin_of(plane: ControlPlane) -> AdminClient:
    return AdminClient(plane.grpc_address, plane.admin_token)


async def type_into(pilot, selector: str, text: str) -> None:
    """Click a field, clear it (ctrl+a: to the start, ctrl+k: delete to the end) and type."""
    await pilot.click(selector)
    await pilot.press("ctrl+a", "ctrl+k", *text)


async def test_deploy_form_validates_confirms_and_sends(plane: ControlPlane, edge: ScriptedAgent) -> None:
    app = live_app(plane)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.screen.query_one(DeploymentsTable).row_count == 1)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DeployForm))
        await pilot.press(*"Code")  # the name field has focus
        await type_into(pilot, "#model", "tiny")
        await type_into(pilot, "#replicas", "2")
        await type_into(pilot, "#max_num_seqs", "8")
        await type_into(pilot, "#max_model_len", "0")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, DeployForm)  # a bad form stays open and says what to fix
        assert "invalid deployment name 'Code'" in screen_text(app)

        await type_into(pilot, "#name", "code")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, DeployForm)
        assert "max_model_len must be >= 1" in screen_text(app)
        await type_into(pilot, "#max_model_len", "")
        await pilot.press("ctrl+s")

        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        text = screen_text(app)
        assert "Deploy code?" in text and "model tiny" in text and "a new deployment" in text
        with admin_of(plane) as admin:
            assert [d.name for d in admin.list_deployments()] == ["chat"]  # nothing sent before "y"
        await pilot.press("y")
        await until(pilot, lambda: "code:" in result(app), what="the deploy's result")
        assert result(app) == "code: rolling out new revision 1 (tiny)"
        with admin_of(plane) as admin:
            code = admin.get_deployment("code")
        assert code.desired_replicas == 2 and json.loads(code.engine_config_json)["max_num_seqs"] == 8
        await until(pilot, lambda: app.screen.query_one(DeploymentsTable).row_data("code"))

        # A new revision from the deployments table starts from the current config; only edits change.
        await pilot.press("tab")
        app.screen.query_one(DeploymentsTable).move_cursor(row=0)  # chat
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DeployForm))
        assert app.screen.query_one("#name", Input).value == "chat"
        assert app.screen.query_one("#max_num_seqs", Input).value == "8"
        await type_into(pilot, "#max_num_batched_tokens", "1024")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "max_num_batched_tokens: 2048 → 1024" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: "cancelled" in result(app))
        assert result(app) == "deploy chat: cancelled, nothing was sent"
        with admin_of(plane) as admin:
            assert len(admin.list_revisions("chat")) == 2


async def test_rollback_scale_and_drain_after_confirmation(plane: ControlPlane, edge: ScriptedAgent) -> None:
    app = live_app(plane)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(DeploymentsTable)
        await until(pilot, lambda: table.row_count == 1 and str(table.cell("chat", "revision")) == "2")

        # Roll back: the chooser starts on the revision before the current one; "n" sends nothing.
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RollbackDialog))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        text = screen_text(app)
        assert "Roll back chat from revision 2 to revision 1?" in text and "max_num_seqs: 8 → 4" in text
        await pilot.press("n")
        await until(pilot, lambda: result(app) == "roll back chat: cancelled, nothing was sent")
        with admin_of(plane) as admin:
            assert admin.get_deployment("chat").revision == 2
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RollbackDialog))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, lambda: result(app) == "chat: rolled back to revision 1")
        with admin_of(plane) as admin:
            assert admin.get_deployment("chat").revision == 1
        await until(pilot, lambda: str(table.cell("chat", "revision")) == "1", what="the table to follow")

        # Scale: a bad count stays in the dialog; the control plane's own limit comes back as its error.
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ScaleDialog))
        await pilot.press(*"-1", "enter")
        assert isinstance(app.screen, ScaleDialog) and "between 0 and 1000" in screen_text(app)
        await pilot.press("ctrl+a", "ctrl+k", *"100", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, lambda: result(app).startswith("scale chat:"))
        assert "replicas must be an integer between 0 and 64, got 100" in result(app)
        assert app.screen.query_one(ResultLine).has_class("-error")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ScaleDialog))
        await pilot.press("3", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "Scale chat from 1 to 3 replicas?" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: result(app) == "chat: scaled to 3 replica(s)")
        with admin_of(plane) as admin:
            assert admin.get_deployment("chat").desired_replicas == 3
        await until(pilot, lambda: str(table.cell("chat", "ready")) == "3/3", what="three ready replicas")

        # Drain the highlighted node.
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "Drain node edge-1?" in screen_text(app) and "3 replica(s)" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: result(app) == "node edge-1: draining")
        with admin_of(plane) as admin:
            assert [n.state for n in admin.list_nodes()] == ["draining"]
        assert isinstance(app.screen, FleetScreen)


async def test_wrong_admin_token_is_shown_and_actions_report_the_refusal(plane: ControlPlane) -> None:
    app = live_app(plane, token="not-the-token")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "✖ refused" in screen_text(app) and "wrong token: pass the admin token"
                    in " ".join(screen_text(app).split()), what="the refusal, in full")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DeployForm))
        await pilot.press(*"chat")
        await type_into(pilot, "#model", "tiny")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await until(pilot, lambda: result(app).startswith("deploy chat:"))
        assert "token" in result(app).lower()
