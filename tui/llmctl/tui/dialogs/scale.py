"""How many replicas a deployment should run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

MAX_REPLICAS = 1000


def parse_replicas(text: str) -> int:
    """The count typed, or ValueError saying what to type instead."""
    try:
        count = int(text.strip())
    except ValueError:
        raise ValueError(f"type a whole number of replicas (0-{MAX_REPLICAS}), not {text.strip()!r}") from None
    if not 0 <= count <= MAX_REPLICAS:
        raise ValueError(f"replicas must be between 0 and {MAX_REPLICAS}, got {count}")
    return count


class ScaleDialog(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, deployment: str, current: int) -> None:
        super().__init__()
        self.deployment, self.current = deployment, current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="scale"):
            yield Static(f"Scale {self.deployment} (now {self.current} replica(s))", classes="dialog-title",
                         markup=False)
            yield Input(str(self.current), id="replicas", compact=True, select_on_focus=True)
            yield Static("", classes="dialog-error", id="scale-error")
            yield Static("Enter: next (you confirm before it is sent)   Esc: cancel", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            count = parse_replicas(event.value)
        except ValueError as e:
            self.query_one("#scale-error", Static).update(str(e))
            return
        self.dismiss(count)

    def action_cancel(self) -> None:
        self.dismiss(None)
