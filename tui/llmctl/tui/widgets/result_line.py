"""The line above the key bar that shows what the last action did, or the control plane's error."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class ResultLine(Static):
    def __init__(self) -> None:
        super().__init__("", id="result-line")
        self.text = ""

    def show(self, ok: bool, text: str) -> None:
        self.text = text
        self.set_class(not ok, "-error")
        self.update(Text(("✔ " if ok else "✖ ") + text))
