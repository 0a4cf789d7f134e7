"""Choose the revision to roll back to: every revision but the current one, newest first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import date_time, tail


class RollbackDialog(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, deployment: str, revisions: list[pb.Revision], preselect: int | None = None) -> None:
        super().__init__()
        self.deployment = deployment
        self.revisions = sorted(revisions, key=lambda r: -r.number)
        self.preselect = preselect

    def compose(self) -> ComposeResult:
        current = next((r.number for r in self.revisions if r.current), None)
        with Vertical(classes="dialog", id="rollback"):
            yield Static(f"Roll back {self.deployment} (now at revision {current}) to:",
                         classes="dialog-title", markup=False)
            options = [
                Option(f"revision {r.number:<3} {tail(r.model, 28):<28} {date_time(r.created_at)}  "
                       f"{r.created_by}" + ("   (current)" if r.current else ""),
                       id=str(r.number), disabled=r.current)
                for r in self.revisions
            ]
            yield OptionList(*options, id="revisions", compact=True)
            yield Static("Enter: choose (you confirm before it is sent)   Esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        choices = [r.number for r in self.revisions if not r.current]
        current = next((r.number for r in self.revisions if r.current), 0)
        # Default: the requested revision, else the newest one before the current (what `llmctl rollback` does).
        default = self.preselect if self.preselect in choices else \
            max((n for n in choices if n < current), default=choices[0] if choices else None)
        if default is not None:
            options.highlighted = options.get_option_index(str(default))
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(int(event.option.id or 0))

    def action_cancel(self) -> None:
        self.dismiss(None)
