"""The audit log as a table that grows at the bottom as events stream in (following the newest while the
cursor is on the last row, like `tail -f`), keeping the newest `limit` rows."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import clock
from llmctl.tui.widgets.keyed_table import Cell, Column, KeyedTable


def _kind_style(kind: str) -> str:
    if kind.endswith(("failed", "unhealthy", "lost", "gave_up", "unschedulable", "degraded")):
        return "red"
    if kind.endswith("watch"):  # quality.watch: a heads-up, not an alarm
        return "yellow"
    if kind.endswith(("completed", "healthy", "registered")):
        return "green"
    return ""


def event_cells(event: pb.Event) -> tuple[Cell, ...]:
    return (str(event.id), clock(event.at), Text(event.kind, style=_kind_style(event.kind)),
            event.deployment, event.node, " ".join(event.message.split()))


class EventsTable(KeyedTable):
    COLUMNS = (
        Column("id", "ID", 5),
        Column("at", "TIME", 8),
        Column("kind", "KIND", 22),
        Column("deployment", "DEPLOYMENT", 12),
        Column("node", "NODE", 12),
        Column("message", "MESSAGE"),
    )

    def __init__(self, limit: int = 1000, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.limit = limit

    def cells(self, event: pb.Event) -> tuple[Cell, ...]:
        return event_cells(event)

    def append(self, events: Iterable[pb.Event]) -> None:
        following = not self.row_count or self.cursor_row >= self.row_count - 1
        rows = dict(self._all)
        for event in events:
            rows[str(event.id)] = self.cells(event)
        for key in list(rows)[: max(0, len(rows) - self.limit)]:
            del rows[key]
        self.set_rows(rows)
        self._title()
        if following and self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    def set_filter(self, text: str) -> None:
        super().set_filter(text)
        self._title()

    def _title(self) -> None:
        self.set_title(f"Events ({self.row_count} shown)" if self.filter_text else "Events")


class DeploymentEventsTable(EventsTable):
    """One deployment's events: no deployment or node column, more room for the message."""

    COLUMNS = (
        Column("at", "TIME", 8),
        Column("kind", "KIND", 20),
        Column("message", "MESSAGE"),
    )

    def cells(self, event: pb.Event) -> tuple[Cell, ...]:
        _id, at, kind, _deployment, _node, message = event_cells(event)
        return at, kind, message

    def _title(self) -> None:
        self.set_title("Recent events")
