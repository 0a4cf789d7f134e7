"""The llmctl dashboard: a Textual app over the control plane's AdminService.

    DashboardApp(LiveFeed(address, admin_token)).run()      what `llmctl dashboard` does
    DashboardApp(RecordedFeed(demo_recording()))            the same screens from recorded answers

The feed posts FleetUpdated / QualityUpdated / OptimizationUpdated / EventsArrived / ConnectionChanged; the App
keeps them in one FleetStore and tells the screens in its stack, which update their tables in place. While the control plane
is away the App says so on every screen, greys the last data it has, and the feed reconnects on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from llmctl.tui.actions import ActionsMixin
from llmctl.tui.commands import DashboardCommands
from llmctl.tui.feed import Feed
from llmctl.tui.messages import (
    Connection,
    ConnectionChanged,
    EventsArrived,
    FleetUpdated,
    Link,
    OptimizationUpdated,
    QualityUpdated,
)
from llmctl.tui.screens.base import DashboardScreen
from llmctl.tui.screens.deployment import DeploymentScreen
from llmctl.tui.screens.events import EventsScreen
from llmctl.tui.screens.fleet import FleetScreen
from llmctl.tui.store import FleetStore
from llmctl.tui.widgets.result_line import ResultLine


class DashboardApp(ActionsMixin, App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    TITLE = "llmctl dashboard"
    COMMANDS: ClassVar[set[Any]] = {DashboardCommands}
    BINDINGS = [
        Binding("colon", "command_palette", "Commands", key_display=":"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    connection: reactive[Connection] = reactive(Connection(Link.CONNECTING, ""), always_update=False)

    def __init__(self, feed: Feed, *, store: FleetStore | None = None) -> None:
        super().__init__()
        self.feed = feed
        self.store = store or FleetStore()
        self.set_reactive(DashboardApp.connection, Connection(Link.CONNECTING, feed.address))
        self.last_result: tuple[bool, str] | None = None
        self.fleet_updates = 0
        """FleetUpdated messages applied so far (tests wait on it)."""

    def get_default_screen(self) -> Screen[Any]:
        return FleetScreen()

    def on_mount(self) -> None:
        self.feed.start(self)

    def on_unmount(self) -> None:
        self.feed.stop()

    async def action_quit(self) -> None:
        self.feed.stop()  # before the App waits for its workers: the feed's threads end promptly
        self.exit()

    # -- data ---------------------------------------------------------------------------------------------
    def _dashboard_screens(self) -> list[DashboardScreen]:
        if not self.is_running:
            # Shutting down: the screens' widgets are being removed while the feed's last messages are handled.
            return []
        return [s for s in self.screen_stack if isinstance(s, DashboardScreen) and s.is_mounted]

    @on(FleetUpdated)
    def _fleet_updated(self, message: FleetUpdated) -> None:
        self.store.apply(message.nodes, message.deployments, message.at)
        self.connection = Connection(Link.CONNECTED, self.feed.address)
        for screen in self._dashboard_screens():
            screen.fleet_changed(self.store)
        self.fleet_updates += 1
        self.feed.applied()

    @on(QualityUpdated)
    def _quality_updated(self, message: QualityUpdated) -> None:
        self.store.apply_quality(message.name, message.report, message.error)
        for screen in self._dashboard_screens():
            screen.quality_changed(self.store, message.name)

    @on(OptimizationUpdated)
    def _optimization_updated(self, message: OptimizationUpdated) -> None:
        self.store.apply_optimization(message.name, message.report, message.at, message.error)
        for screen in self._dashboard_screens():
            screen.optimization_changed(self.store, message.name)

    @on(EventsArrived)
    def _events_arrived(self, message: EventsArrived) -> None:
        fresh = self.store.add_events(message.take())
        if fresh:
            for screen in self._dashboard_screens():
                screen.events_arrived(self.store, fresh)

    @on(ConnectionChanged)
    def _connection_changed(self, message: ConnectionChanged) -> None:
        self.connection = message.connection

    def watch_connection(self, connection: Connection) -> None:
        # Greyed while the data is not live (stylesheet: .-stale).
        self.set_class(connection.link != Link.CONNECTED, "-stale")

    # -- navigation -----------------------------------------------------------------------------------------
    def action_fleet(self) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def action_events(self) -> None:
        if not isinstance(self.screen, EventsScreen):
            self.push_screen(EventsScreen())

    def open_deployment(self, name: str) -> None:
        self.push_screen(DeploymentScreen(name))

    def action_help(self) -> None:
        from llmctl.tui.dialogs.help import HelpDialog

        if not isinstance(self.screen, HelpDialog):
            self.push_screen(HelpDialog())

    # -- results --------------------------------------------------------------------------------------------
    def report(self, ok: bool, text: str) -> None:
        """What an action did (or the control plane's error), on every screen's result line."""
        self.last_result = (ok, text)
        for screen in self._dashboard_screens():
            screen.query_one(ResultLine).show(ok, text)
        if not ok:
            self.notify(text, severity="error", timeout=8)
