"""The dashboard's copy of the fleet: the latest nodes and deployments, their history, the quality reports
and newest optimization runs of the deployments whose screens are open, and the audit log.

The App owns one FleetStore; messages from the feed change it, and screens read it to update their widgets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.history import History, sample_of

HISTORY_S = 600.0
"""Stats history kept per deployment: the latency plot spans it; sparklines show the newest part."""
MAX_EVENTS = 1000
"""Audit-log entries kept in memory; the Events screen shows these."""


class FleetStore:
    def __init__(self, history_s: float = HISTORY_S, max_events: int = MAX_EVENTS) -> None:
        self.history_s = history_s
        self.nodes: dict[str, pb.Node] = {}
        self.deployments: dict[str, pb.Deployment] = {}
        self.histories: dict[str, History] = {}
        self.events: deque[pb.Event] = deque(maxlen=max_events)
        self.quality: dict[str, pb.QualityReport] = {}
        """The latest quality report of each followed deployment (kept after its screen closes)."""
        self.quality_errors: dict[str, str] = {}
        """Why the latest poll of a deployment's quality report failed; gone once one succeeds."""
        self.optimizations: dict[str, dict[str, Any] | None] = {}
        """The report of each followed deployment's newest optimization run (None: it has none; absent: not
        polled yet)."""
        self.optimization_errors: dict[str, str] = {}
        """Why the latest poll of a deployment's optimization run failed; gone once one succeeds."""
        self.optimizations_at: dict[str, float] = {}
        """When each deployment's optimization run was last read (a running run's time so far ends there)."""
        self.updated_at: float | None = None
        """When the control plane last answered (the poll's time)."""

    def apply(self, nodes: Iterable[pb.Node], deployments: Iterable[pb.Deployment], at: float) -> None:
        """The fleet as one poll saw it: replaces what was there (vanished nodes and deployments go)."""
        self.nodes = {n.name: n for n in nodes}
        self.deployments = {d.name: d for d in deployments}
        for name, deployment in self.deployments.items():
            history = self.histories.setdefault(name, History(self.history_s))
            history.add(sample_of(deployment.stats, at))
        for gone in self.histories.keys() - self.deployments.keys():
            del self.histories[gone]
        for gone in self.quality.keys() - self.deployments.keys():
            del self.quality[gone]
        for gone in self.optimizations.keys() - self.deployments.keys():
            del self.optimizations[gone], self.optimizations_at[gone]
        self.updated_at = at

    def apply_quality(self, name: str, report: pb.QualityReport | None, error: str = "") -> None:
        """One poll of deployment `name`'s quality: its report, or the error (the last report stays)."""
        if report is not None:
            self.quality[name] = report
            self.quality_errors.pop(name, None)
        else:
            self.quality_errors[name] = error

    def apply_optimization(self, name: str, report: dict[str, Any] | None, at: float, error: str = "") -> None:
        """One poll of deployment `name`'s newest optimization run: its report (None: no run), or the error
        (the last report stays)."""
        if error:
            self.optimization_errors[name] = error
            return
        self.optimizations[name] = report
        self.optimizations_at[name] = at
        self.optimization_errors.pop(name, None)

    @property
    def last_event_id(self) -> int:
        return self.events[-1].id if self.events else 0

    def add_events(self, events: Iterable[pb.Event]) -> list[pb.Event]:
        """Appends the events not seen yet (a resumed watch may repeat some); returns those."""
        fresh = []
        for event in events:
            if event.id > self.last_event_id:
                self.events.append(event)
                fresh.append(event)
        return fresh

    def deployment_events(self, name: str, limit: int) -> list[pb.Event]:
        """The newest `limit` events about deployment `name`, oldest first."""
        found = [e for e in reversed(self.events) if e.deployment == name][:limit]
        return found[::-1]
