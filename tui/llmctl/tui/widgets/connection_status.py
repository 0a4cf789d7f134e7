"""The top line of every screen: where the dashboard is, whether the control plane answers, and how fresh
the data is. Always visible, so a stale screen never passes for a live one."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.widgets import Static

from llmctl.tui.format import clock
from llmctl.tui.messages import Link

if TYPE_CHECKING:
    from llmctl.tui.app import DashboardApp

MARKS = {
    Link.CONNECTING: ("◌", "yellow"),
    Link.CONNECTED: ("●", "green"),
    Link.DISCONNECTED: ("✖", "bold red"),
    Link.REFUSED: ("✖", "bold red"),
}


class ConnectionStatus(Static):
    def __init__(self, place: str) -> None:
        super().__init__(id="connection-status")
        self.place = place
        self._shown: Text | None = None

    def on_mount(self) -> None:
        self.watch(self.app, "connection", lambda _: self.refresh_status())

    def refresh_status(self) -> None:
        app = cast("DashboardApp", self.app)
        connection, store = app.connection, app.store
        mark, style = MARKS[connection.link]
        text = Text.assemble(("llmctl", "bold"), f" › {self.place}   ", (f"{mark} {connection.link}", style),
                             f"  {connection.address}")
        problem = connection.link != Link.CONNECTED
        if not problem:
            text.append(f"   {len(store.nodes)} nodes · {len(store.deployments)} deployments"
                        f"   updated {clock(store.updated_at)}", style="dim")
        else:
            if connection.detail:
                text.append(f"   {connection.detail}", style=style)
            if store.updated_at is not None:
                text.append(f"   showing data from {clock(store.updated_at)}; reconnecting…", style="dim")
        if text == self._shown and str(text.style) == str(getattr(self._shown, "style", "")):
            return
        # One line while connected, so a poll repaints this line only; a problem may wrap (layout).
        relayout = problem or self.has_class("-problem")
        self.set_class(problem, "-problem")
        self._shown = text
        self.update(text, layout=relayout)
