"""`?`: every key, on every screen."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("Anywhere", ""),
    (":", "command palette: go to a screen, act on any deployment or node by name"),
    ("/", "filter the rows on this screen (Enter keeps the filter, Esc clears it)"),
    ("?", "this help"),
    ("Esc", "back (or clear the filter)"),
    ("e", "events: the audit log, live"),
    ("q", "quit"),
    ("Fleet", ""),
    ("Tab", "move between the nodes and deployments tables"),
    ("Enter", "open the highlighted deployment"),
    ("d", "deploy: a new deployment or revision (form, then confirm)"),
    ("r", "roll back the highlighted deployment (choose a revision, then confirm)"),
    ("s", "scale the highlighted deployment (then confirm)"),
    ("x", "drain the highlighted node (confirm)"),
    ("Deployment", ""),
    ("↑ ↓", "pick a revision: the diff compares it with the diff base"),
    ("space", "make the highlighted revision the diff base"),
    ("d r s", "deploy a new revision of it, roll back, scale"),
)


class HelpDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, meaning in KEYS:
            if meaning:
                table.add_row(key, meaning)
            else:  # a group heading, after a blank line
                if table.row_count:
                    table.add_row("", "")
                table.add_row(f"[bold]{key}[/bold]", "")
        with Vertical(classes="dialog", id="help"):
            yield Static("Keys (nothing is sent to the control plane without a confirmation)",
                         classes="dialog-title")
            yield Static(table)
            yield Static("Esc: close", classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
