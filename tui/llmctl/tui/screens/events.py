"""Events: the audit log, live; `/` filters it (kind, deployment, node, actor or words of the message)."""

from __future__ import annotations

from textual.app import ComposeResult

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.screens.base import DashboardScreen
from llmctl.tui.store import FleetStore
from llmctl.tui.widgets.events_table import EventsTable


class EventsScreen(DashboardScreen):
    PLACE = "Events"

    def compose_body(self) -> ComposeResult:
        yield EventsTable(id="events")

    def events_arrived(self, store: FleetStore, events: list[pb.Event]) -> None:
        self.query_one(EventsTable).append(events)

    def apply_filter(self, text: str) -> None:
        self.query_one(EventsTable).set_filter(text)
