"""One deployment (Enter on the Fleet screen): its quality judgement and sampling policy, revision history
with a config diff between any two revisions, its replicas (serving, scoring, trial) and where they run, its
newest optimization run step by step, latency and quality over time, and its recent events. While it is open
the feed polls its quality report and newest optimization run."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Static

from llmctl.controlplane.commands.render import quality_policy_dict, quality_policy_text
from llmctl.controlplane.errors import ControlPlaneError
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.tui.format import milliseconds, number, percent, quality_badge
from llmctl.tui.screens.base import DashboardScreen
from llmctl.tui.store import FleetStore
from llmctl.tui.widgets.config_diff import ConfigDiff
from llmctl.tui.widgets.events_table import DeploymentEventsTable
from llmctl.tui.widgets.latency_plot import LatencyPlot
from llmctl.tui.widgets.optimization_panel import OptimizationPanel
from llmctl.tui.widgets.quality_plot import QualityPlot
from llmctl.tui.widgets.replicas_table import ReplicasTable
from llmctl.tui.widgets.revisions_table import RevisionsTable

REFRESH_ON = ("deployment.", "rollout.")
"""Event kinds after which the revision list may have changed."""


def _stat(stats: pb.DeploymentStats, name: str) -> float | None:
    return getattr(stats, name) if stats.HasField(name) else None


def summary(deployment: pb.Deployment | None, name: str) -> Text:
    if deployment is None:
        return Text(f"{name}: not on the control plane (deleted, or not loaded yet)", style="yellow")
    d, s = deployment, deployment.stats
    badge = quality_badge(d.quality_state, d.quality.sample_rate > 0, pad=True)
    text = Text.assemble((d.name, "bold"), " ", badge, f" {d.model}  rev {d.revision}  ",
                         (f"{d.ready_replicas}/{d.desired_replicas} ready",
                          "green" if d.ready_replicas >= d.desired_replicas else "yellow"),
                         f"  {d.weight_quantization or 'none'}/{d.kv_cache_dtype or 'auto'}")
    if d.HasField("autoscaling"):
        a = d.autoscaling
        text.append(f"  autoscale {a.min_replicas}-{a.max_replicas} {a.mode}", "cyan" if a.mode == "on" else "dim")
    for label, cell in (("req/s", number(_stat(s, "requests_per_s"))),
                        ("TTFT95", milliseconds(_stat(s, "ttft_p95_s"))),
                        ("tok/s", number(_stat(s, "tokens_per_s"), 0)),
                        ("KV", percent(_stat(s, "kv_cache_usage"))),
                        ("queue", number(_stat(s, "queue_depth"), 0))):
        text.append(f"  {label} ")
        text.append_text(cell)
    return text


def policy_line(deployment: pb.Deployment | None, report: pb.QualityReport | None, error: str) -> Text:
    """The sampling policy (the quality report's, or the deployment's until a report comes), and why the
    latest poll of the report failed, if it did."""
    policy = report.policy if report is not None else deployment.quality if deployment is not None else None
    text = Text(quality_policy_text(quality_policy_dict(policy)) if policy is not None else "quality: -",
                style="dim")
    if error:
        text.append(f"  quality report: {error}", style="yellow")
    return text


class DeploymentScreen(DashboardScreen):
    BINDINGS = [
        Binding("d", "deploy", "New revision"),
        Binding("r", "rollback", "Roll back"),
        Binding("s", "scale", "Scale"),
        Binding("space", "mark_base", "Diff base", show=False),
    ]

    def __init__(self, deployment: str) -> None:
        super().__init__()
        self.deployment = deployment
        self.revisions: list[pb.Revision] = []
        self.base: int | None = None
        """The revision the diff compares from (None: the one before the highlighted revision)."""

    @property
    def place(self) -> str:
        return f"Deployment {self.deployment}"

    def compose_body(self) -> ComposeResult:
        yield Static(id="summary")
        yield Static(id="quality-policy")
        with Horizontal(id="deployment-top"):
            yield RevisionsTable(id="revisions")
            yield ConfigDiff()
        yield ReplicasTable(id="replicas")
        yield OptimizationPanel(self.deployment)
        with Horizontal(id="deployment-plots"):
            yield LatencyPlot()
            yield QualityPlot()
        yield DeploymentEventsTable(limit=200, id="deployment-events")

    def on_mount(self) -> None:
        self.dashboard.feed.follow(self.deployment)
        super().on_mount()
        self.query_one(DeploymentEventsTable).border_title = "Recent events"
        self.quality_changed(self.dashboard.store, self.deployment)
        self.optimization_changed(self.dashboard.store, self.deployment)
        self.load_revisions()

    def on_unmount(self) -> None:
        self.dashboard.feed.unfollow(self.deployment)

    # -- data ---------------------------------------------------------------------------------------------
    def fleet_changed(self, store: FleetStore) -> None:
        super().fleet_changed(store)
        deployment = store.deployments.get(self.deployment)
        self.query_one("#summary", Static).update(summary(deployment, self.deployment), layout=False)
        self._show_policy(store)
        self.query_one(ReplicasTable).show(deployment)
        self.query_one(LatencyPlot).show(store.histories.get(self.deployment))

    def quality_changed(self, store: FleetStore, name: str) -> None:
        if name != self.deployment:
            return
        self._show_policy(store)
        self.query_one(QualityPlot).show(store.quality.get(name), store.quality_errors.get(name, ""))

    def optimization_changed(self, store: FleetStore, name: str) -> None:
        if name != self.deployment:
            return
        self.query_one(OptimizationPanel).show(store.optimizations.get(name), polled=name in store.optimizations,
                                               error=store.optimization_errors.get(name, ""),
                                               at=store.optimizations_at.get(name))

    def _show_policy(self, store: FleetStore) -> None:
        line = policy_line(store.deployments.get(self.deployment), store.quality.get(self.deployment),
                           store.quality_errors.get(self.deployment, ""))
        self.query_one("#quality-policy", Static).update(line, layout=False)

    def events_arrived(self, store: FleetStore, events: list[pb.Event]) -> None:
        mine = [e for e in events if e.deployment == self.deployment]
        if not mine:
            return
        self.query_one(DeploymentEventsTable).append(mine)
        if self.revisions and any(e.kind.startswith(REFRESH_ON) for e in mine):
            self.load_revisions()

    @work(group="revisions", exclusive=True)
    async def load_revisions(self) -> None:
        try:
            self.revisions = await self.dashboard.admin(lambda a: a.list_revisions(self.deployment))
        except ControlPlaneError as e:
            self.dashboard.report(False, f"revisions of {self.deployment}: {e.message}")
            return
        self._show_revisions()

    def _show_revisions(self) -> None:
        self.query_one(RevisionsTable).show(self.revisions, self.base)
        self._show_diff()

    def _show_diff(self) -> None:
        by_number = {r.number: r for r in self.revisions}
        chosen = self.query_one(RevisionsTable).cursor_revision
        new = by_number.get(chosen) if chosen is not None else None
        if new is None:
            new = next((r for r in self.revisions if r.current), None)
        old = by_number.get(self.base) if self.base is not None else None
        if new is not None and (old is None or old.number == new.number):
            earlier = [n for n in by_number if n < new.number]
            later = [n for n in by_number if n > new.number]
            pick = max(earlier) if earlier else min(later) if later else None
            old = by_number.get(pick) if pick is not None else None
        self.query_one(ConfigDiff).show(old, new)

    @on(DataTable.RowHighlighted, "#revisions")
    def _revision_highlighted(self) -> None:
        self._show_diff()

    # -- keys ---------------------------------------------------------------------------------------------
    def action_mark_base(self) -> None:
        chosen = self.query_one(RevisionsTable).cursor_revision
        self.base = None if chosen == self.base else chosen
        self._show_revisions()

    def action_deploy(self) -> None:
        self.dashboard.deploy(self.dashboard.store.deployments.get(self.deployment))

    def action_rollback(self) -> None:
        self.dashboard.rollback(self.deployment, self.query_one(RevisionsTable).cursor_revision)

    def action_scale(self) -> None:
        self.dashboard.scale(self.deployment)
