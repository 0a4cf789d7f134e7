"""A deployment's revisions, newest first: the current one marked ●, the diff's base marked ◆."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import head, short_time, tail
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable


def engine_config(revision: pb.Revision) -> dict[str, Any]:
    try:
        data = json.loads(revision.engine_config_json or "{}")
    except ValueError:
        return {"_unparsed": revision.engine_config_json}
    return data if isinstance(data, dict) else {"_unparsed": revision.engine_config_json}


class RevisionsTable(KeyedTable):
    COLUMNS = (
        Column("mark", " ", 1),
        Column("number", "REV", 3),
        Column("model", "MODEL", 14),
        Column("created", "CREATED", 11),
        Column("by", "BY", 7),
        Column("reason", "REASON", 8),
    )

    def show(self, revisions: list[pb.Revision], base: int | None) -> None:
        rows: dict[str, tuple[Cell, ...]] = {}
        for r in sorted(revisions, key=lambda r: -r.number):
            mark = Text("●", style="green") if r.current else Text("◆", style="yellow") if r.number == base \
                else ""
            rows[str(r.number)] = (mark, str(r.number), tail(r.model, 14), short_time(r.created_at),
                                   head(r.created_by, 7), head(r.reason, 8))
        self.set_rows(rows)
        self.set_title("Revisions  ● current  ◆ diff base (space)")

    @property
    def cursor_revision(self) -> int | None:
        key = self.cursor_key
        return None if key is None else int(key)
