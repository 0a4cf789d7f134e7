"""Fleet, the home screen: every node's GPUs and every deployment's live stats, with the actions on them."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from llmctl.tui.screens.base import DashboardScreen
from llmctl.tui.store import FleetStore
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.nodes_table import NodesTable


class FleetScreen(DashboardScreen):
    PLACE = "Fleet"
    BINDINGS = [
        Binding("d", "deploy", "Deploy"),
        Binding("r", "rollback", "Roll back"),
        Binding("s", "scale", "Scale"),
        Binding("x", "drain", "Drain node"),
    ]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="fleet-body"):
            yield NodesTable(id="nodes")
            yield DeploymentsTable(id="deployments")

    def fleet_changed(self, store: FleetStore) -> None:
        super().fleet_changed(store)
        self.query_one(NodesTable).show(store.nodes.values())
        self.query_one(DeploymentsTable).show(store.deployments.values(), store.histories)

    def apply_filter(self, text: str) -> None:
        self.query_one(NodesTable).set_filter(text)
        self.query_one(DeploymentsTable).set_filter(text)

    @property
    def selected_deployment(self) -> str | None:
        return self.query_one(DeploymentsTable).cursor_key

    def _need_deployment(self, what: str) -> str | None:
        name = self.selected_deployment
        if name is None:
            self.dashboard.report(False, f"{what}: no deployment highlighted (Tab to the deployments table)")
        return name

    @on(DataTable.RowSelected, "#deployments")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.dashboard.open_deployment(str(event.row_key.value))

    def action_deploy(self) -> None:
        # From the deployments table: a new revision of the highlighted deployment; else a new deployment.
        table = self.query_one(DeploymentsTable)
        name = table.cursor_key if self.focused is table else None
        self.dashboard.deploy(self.dashboard.store.deployments.get(name) if name else None)

    def action_rollback(self) -> None:
        if name := self._need_deployment("roll back"):
            self.dashboard.rollback(name)

    def action_scale(self) -> None:
        if name := self._need_deployment("scale"):
            self.dashboard.scale(name)

    def action_drain(self) -> None:
        node = self.query_one(NodesTable).cursor_node
        if node is None:
            return self.dashboard.report(False, "drain: no node highlighted")
        self.dashboard.drain(node)
