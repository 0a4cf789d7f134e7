"""The `/` filter: a one-line input at the bottom of a screen; rows must contain every word typed."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    BINDINGS = [Binding("escape", "clear", "Clear filter", show=False)]

    class FilterChanged(Message):
        """The filter text changed (empty: no filter)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class FilterDone(Message):
        """Enter or Esc: focus goes back to the screen."""

    def __init__(self) -> None:
        super().__init__(placeholder="filter: words every row must contain (Enter keeps it, Esc clears)",
                         id="filter-bar", compact=True)

    def open(self) -> None:
        self.add_class("-open")
        # Focus now, not on the next idle (what focus() does): keys typed right after `/` arrive in the
        # same burst and must land here.
        self.screen.set_focus(self)

    def action_clear(self) -> None:
        self.value = ""
        self.remove_class("-open")
        self.post_message(self.FilterDone())

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.FilterChanged(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.value:
            self.remove_class("-open")
        self.post_message(self.FilterDone())
