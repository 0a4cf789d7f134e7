"""Losing the control plane and getting it back: the dashboard says so on screen, keeps the last data
greyed, reports actions as unreachable, and reconnects on its own to a new control plane on the same
database and port, where fresh data and events flow again."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.controlplane.client import AdminClient
from llmctl.tui.dialogs.confirm import ConfirmDialog
from llmctl.tui.dialogs.scale import ScaleDialog
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.events_table import EventsTable
from llmctl.tui.widgets.result_line import ResultLine
from tests.controlplane.harness import running_control_plane
from tests.e2e.conftest import free_port
from tests.tui.conftest import SIZE, live_app, screen_text, serving_agent, until

pytestmark = pytest.mark.anyio


async def test_disconnect_greys_the_last_data_and_reconnect_refreshes_it(tmp_path: Path) -> None:
    home, port = tmp_path / "cp", free_port()
    with running_control_plane(home, grpc_port=port) as first:
        edge = serving_agent(first)
        with AdminClient(first.grpc_address, first.admin_token) as admin:
            admin.deploy("chat", "tiny", {}, replicas=1)
        app = live_app(first)
        async with app.run_test(size=SIZE) as pilot:
            table = app.screen.query_one(DeploymentsTable)
            await until(pilot, lambda: str(table.cell("chat", "ready")) == "1/1",
                        what="chat ready")
            assert not app.has_class("-stale")

            first.stop(grace_s=0)
            edge.close()
            await until(pilot, lambda: "✖ disconnected" in screen_text(app), what="the disconnect")
            text = " ".join(screen_text(app).split())
            assert f"control plane at 127.0.0.1:{port} is unreachable" in text
            assert "showing data from" in text and "reconnecting" in text
            assert app.has_class("-stale")  # the stylesheet greys every table while this is set
            assert table.row_data("chat") is not None and "chat" in screen_text(app)  # the last data stays

            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ScaleDialog))
            await pilot.press("ctrl+a", "ctrl+k", "2", "enter")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")
            result = app.screen.query_one(ResultLine)
            await until(pilot, lambda: result.text.startswith("scale chat:"), what="the scale's error")
            assert "unreachable" in result.text and result.has_class("-error")

            with running_control_plane(home, grpc_port=port) as second:
                with AdminClient(second.grpc_address, second.admin_token, timeout_s=5, own_connection=True) as admin:
                    admin.deploy("code", "tiny", {"max_num_seqs": 2}, replicas=1)
                await until(pilot, lambda: table.row_data("code") is not None, what="fresh data")
                await until(pilot, lambda: "● connected" in screen_text(app), what="the reconnect")
                assert not app.has_class("-stale")
                assert table.row_data("chat") is not None  # the same database: chat is still there

                await pilot.press("e")
                events = app.screen.query_one(EventsTable)
                await until(pilot, lambda: "code: " in screen_text(app) or any(
                    "code" in str(getattr(c, "plain", c)) for i in range(events.row_count)
                    for c in events.get_row_at(i)), what="the new deployment's event, streamed")
                await pilot.press("q")
