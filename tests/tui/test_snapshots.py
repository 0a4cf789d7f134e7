"""The Fleet and Deployment screens (`code`'s, and `chat`'s with an optimization run under way) at 120x40, byte
for byte, from a recorded fleet fed through the same messages the live feed posts (fixed times and values;
clock times in UTC). Regenerate after a deliberate change with `pytest tests/tui/test_snapshots.py
--snapshot-update` and look at the SVGs before committing."""

from __future__ import annotations

from textual.pilot import Pilot

from llmctl.tui.app import DashboardApp
from llmctl.tui.recorded import RecordedFeed, demo_recording
from llmctl.tui.screens.deployment import DeploymentScreen
from llmctl.tui.widgets.optimization_panel import StepsTable
from llmctl.tui.widgets.revisions_table import RevisionsTable
from tests.tui.conftest import SIZE, until


def recorded_app() -> DashboardApp:
    return DashboardApp(RecordedFeed(demo_recording()))


async def settled(pilot: Pilot) -> None:
    """Every recorded poll and event applied."""
    app = pilot.app
    feed = app.feed
    await until(pilot, lambda: app.fleet_updates == len(feed.recording.frames)
                and len(app.store.events) == len(feed.recording.events), what="the recording")


def test_fleet_screen(snap_compare) -> None:
    assert snap_compare(recorded_app(), terminal_size=SIZE, run_before=settled)


def test_fleet_screen_greys_the_last_data_when_the_control_plane_is_gone(snap_compare) -> None:
    async def disconnect(pilot: Pilot) -> None:
        await settled(pilot)
        pilot.app.feed.lose_connection("control plane at 10.0.0.5:50051 is unreachable (Connection refused); "
                                       "is `llmctl server` running there?")
        await until(pilot, lambda: pilot.app.has_class("-stale"))

    assert snap_compare(recorded_app(), terminal_size=SIZE, run_before=disconnect)


def test_deployment_screen(snap_compare) -> None:
    async def open_code(pilot: Pilot) -> None:
        await settled(pilot)
        await pilot.press("tab", "down", "enter")  # the deployments table, its second row: code
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, DeploymentScreen)
                    and app.screen.query_one(RevisionsTable).row_count == 2, what="code's revisions")

    assert snap_compare(recorded_app(), terminal_size=SIZE, run_before=open_code)


def test_deployment_screen_with_an_optimization_run(snap_compare) -> None:
    async def open_chat(pilot: Pilot) -> None:
        await settled(pilot)
        await pilot.press("tab", "enter")  # the deployments table, its first row: chat, being optimized
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, DeploymentScreen)
                    and app.screen.query_one(RevisionsTable).row_count == 1
                    and app.screen.query_one(StepsTable).row_count == 5, what="chat's revision and run")

    assert snap_compare(recorded_app(), terminal_size=SIZE, run_before=open_chat)
