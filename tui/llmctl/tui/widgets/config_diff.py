"""The engine-config keys (and model) that differ between two revisions, as `llmctl revisions --diff`."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from llmctl.controlplane.commands.render import config_changes, value_text
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.widgets.revisions_table import engine_config


def revision_changes(old: pb.Revision, new: pb.Revision) -> list[dict[str, object]]:
    return config_changes({**engine_config(old), "model": old.model}, {**engine_config(new), "model": new.model})


class ConfigDiff(Static):
    def __init__(self) -> None:
        super().__init__(id="config-diff")
        self.border_title = "Config diff"

    def show(self, old: pb.Revision | None, new: pb.Revision | None) -> None:
        if old is None or new is None:
            self.border_title = "Config diff"
            self.update(Text("one revision only: nothing to compare", style="dim"))
            return
        self.border_title = f"Config diff: revision {old.number} → {new.number}"
        changes = revision_changes(old, new)
        if not changes:
            self.update(Text(f"revisions {old.number} and {new.number} have the same model and engine config",
                             style="dim"))
            return
        table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
        for label in ("KEY", f"REV {old.number}", f"REV {new.number}"):
            table.add_column(label, overflow="fold")
        for change in changes:
            table.add_row(str(change["key"]), Text(value_text(change["from"]), style="red"),
                          Text(value_text(change["to"]), style="green"))
        self.update(table)
