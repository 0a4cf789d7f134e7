"""What every dashboard screen has: the connection line on top, the `/` filter, the last action's result
and the key bar at the bottom; and how data reaches it (the App calls fleet_changed / quality_changed /
optimization_changed / events_arrived)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.store import FleetStore
from llmctl.tui.widgets.connection_status import ConnectionStatus
from llmctl.tui.widgets.filter_bar import FilterBar
from llmctl.tui.widgets.result_line import ResultLine

if TYPE_CHECKING:
    from llmctl.tui.app import DashboardApp


class DashboardScreen(Screen[None]):
    PLACE = ""
    _before_filter: Widget | None = None
    """What had focus when `/` opened the filter; it gets focus back after."""
    BINDINGS = [
        # Priority: handled before the key is routed, so text typed right after `/` (a paste, a script,
        # a fast typist) lands in the filter rather than in the table that had focus.
        Binding("slash", "filter", "Filter", priority=True),
        Binding("escape", "back", "Back"),
        Binding("e", "app.events", "Events"),
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    @property
    def dashboard(self) -> DashboardApp:
        return cast("DashboardApp", self.app)

    @property
    def place(self) -> str:
        return self.PLACE

    def compose(self) -> ComposeResult:
        yield ConnectionStatus(self.place)
        yield from self.compose_body()
        yield FilterBar()
        yield ResultLine()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.query_one(ConnectionStatus).refresh_status()
        if self.dashboard.last_result is not None:
            self.query_one(ResultLine).show(*self.dashboard.last_result)
        store = self.dashboard.store
        if store.updated_at is not None:
            self.fleet_changed(store)
        if store.events:
            self.events_arrived(store, list(store.events))

    # -- data from the App --------------------------------------------------------------------------------
    def fleet_changed(self, store: FleetStore) -> None:
        self.query_one(ConnectionStatus).refresh_status()

    def quality_changed(self, store: FleetStore, name: str) -> None:
        """A new quality report (or error) for deployment `name`, which a screen follows."""

    def optimization_changed(self, store: FleetStore, name: str) -> None:
        """A new read of deployment `name`'s newest optimization run (or an error), which a screen follows."""

    def events_arrived(self, store: FleetStore, events: list[pb.Event]) -> None:
        pass

    def apply_filter(self, text: str) -> None:
        pass

    # -- keys ---------------------------------------------------------------------------------------------
    def action_filter(self) -> None:
        bar = self.query_one(FilterBar)
        if self.focused is bar:
            bar.insert_text_at_cursor("/")  # a `/` typed in the filter is text
            return
        self._before_filter = self.focused
        bar.open()

    def action_back(self) -> None:
        bar = self.query_one(FilterBar)
        if bar.value:
            bar.action_clear()
        elif len(self.app.screen_stack) > 1:  # the Fleet screen is the bottom of the stack: stay there
            self.app.pop_screen()

    @on(FilterBar.FilterChanged)
    def _filter_changed(self, event: FilterBar.FilterChanged) -> None:
        self.apply_filter(event.text)

    @on(FilterBar.FilterDone)
    def _filter_done(self) -> None:
        before = self._before_filter
        if before is not None and before.is_attached:
            before.focus()
        else:
            self.focus_next()
