"""What the feed tells the App. The live feed (AdminService over gRPC) and a recorded one post the same
messages, so every screen is drawn by one code path whichever source is behind it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from textual.message import Message

from llmctl.controlplane.proto import llmctl_pb2 as pb


class Link(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REFUSED = "refused"
    """The control plane answered but rejected the admin token."""


@dataclass(frozen=True)
class Connection:
    link: Link
    address: str
    detail: str = ""


class ConnectionChanged(Message):
    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection


class FleetUpdated(Message):
    """One poll: every node and deployment as the control plane sees them at `at` (unix seconds).

    A poll that answered means the control plane is reachable."""

    def __init__(self, nodes: list[pb.Node], deployments: list[pb.Deployment], at: float) -> None:
        super().__init__()
        self.nodes, self.deployments, self.at = nodes, deployments, at


class QualityUpdated(Message):
    """One poll of a followed deployment's quality report (GetQuality), or the control plane's error for it
    (`report` None, `error` its message: the deployment is gone, or the control plane has no quality)."""

    def __init__(self, name: str, report: pb.QualityReport | None, at: float, error: str = "") -> None:
        super().__init__()
        self.name, self.report, self.at, self.error = name, report, at, error


class OptimizationUpdated(Message):
    """One poll of a followed deployment's newest optimization run (GetOptimization): its report (report_json,
    parsed by the feed's thread), None when the deployment has no run, or the control plane's error."""

    def __init__(self, name: str, report: dict[str, Any] | None, at: float, error: str = "") -> None:
        super().__init__()
        self.name, self.report, self.at, self.error = name, report, at, error


class EventMailbox:
    """Events from the watch thread, handed to the UI in batches: while one EventsArrived waits in the
    App's queue, newer events join its batch instead of each posting a message of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: list[pb.Event] = []
        self._posted = False

    def put(self, event: pb.Event) -> list[pb.Event] | None:
        """Adds the event; returns the batch when the UI has not been told about it yet."""
        with self._lock:
            self._batch.append(event)
            if self._posted:
                return None
            self._posted = True
            return self._batch

    def take(self, batch: list[pb.Event]) -> list[pb.Event]:
        with self._lock:
            taken = list(batch)
            if batch is self._batch:
                self._batch, self._posted = [], False
            return taken


class EventsArrived(Message):
    """New audit-log entries, oldest first."""

    def __init__(self, events: list[pb.Event], mailbox: EventMailbox | None = None) -> None:
        super().__init__()
        self._events, self._mailbox = events, mailbox

    def take(self) -> list[pb.Event]:
        return self._mailbox.take(self._events) if self._mailbox is not None else list(self._events)
