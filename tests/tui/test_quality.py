"""Quality sampling on the dashboard: the Fleet screen's QUALITY badge, and the Deployment screen's badge,
policy line, replica roles and per-revision quality plot, from a recorded fleet and from a real control
plane whose quality report is polled only while a Deployment screen is open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rich.style import Style
from textual.pilot import Pilot

from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.db.models import QualityState
from llmctl.controlplane.db.session import make_engine, session_factory, session_scope
from llmctl.controlplane.server import ControlPlane
from llmctl.controlplane.services import deployments, quality
from llmctl.tui.app import DashboardApp
from llmctl.tui.recorded import RecordedFeed, demo_recording
from llmctl.tui.screens.deployment import DeploymentScreen, summary
from llmctl.tui.screens.fleet import FleetScreen
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.quality_plot import QualityPlot
from llmctl.tui.widgets.replicas_table import ReplicasTable
from tests.tui.conftest import SIZE, live_app, screen_text, serving_agent, until

pytestmark = pytest.mark.anyio


def recorded_app() -> DashboardApp:
    return DashboardApp(RecordedFeed(demo_recording()))


def is_red_badge(style: str | Style) -> bool:
    parsed = Style.parse(style) if isinstance(style, str) else style
    return parsed.bgcolor is not None and parsed.bgcolor.name == "red"


async def opened(pilot: Pilot[None], name: str) -> QualityPlot:
    """Opens deployment `name`'s screen; its quality plot once the screen is drawn."""
    app = pilot.app
    app.open_deployment(name)
    plots = await until(pilot, lambda: isinstance(app.screen, DeploymentScreen)
                        and app.screen.deployment == name and list(app.screen.query(QualityPlot)),
                        what=f"{name}'s screen")
    return plots[0]


async def test_fleet_screen_shows_a_degraded_deployment_as_a_red_badge() -> None:
    app = recorded_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(DeploymentsTable)
        await until(pilot, lambda: table.row_count == 4, what="the recorded deployments")
        badges = {name: table.cell(name, "quality") for name in ("chat", "code", "embed", "summarize")}
        assert {name: badge.plain for name, badge in badges.items()} == {
            "chat": "ok", "code": "DEGRADED", "embed": "off", "summarize": "ok"}
        assert is_red_badge(badges["code"].style)
        assert not any(is_red_badge(badges[name].style) for name in ("chat", "embed", "summarize"))
        assert "DEGRADED" in screen_text(app) and "QUALITY" in screen_text(app)

        # The filter finds it too: the badge is text like any cell.
        await pilot.press("slash", *"degraded")
        await until(pilot, lambda: table.row_count == 1)
        assert table.cursor_key == "code"


async def test_deployment_screen_shows_the_badge_policy_roles_and_a_line_per_revision() -> None:
    app = recorded_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.screen.query_one(DeploymentsTable).row_count == 4)
        plot = await opened(pilot, "code")
        await until(pilot, lambda: plot.labels, what="the quality report")
        assert plot.labels == ["rev 1 ok", "rev 2 degraded"]

        text = screen_text(app)
        assert "code  DEGRADED  llama-3.1-8b-instruct  rev 2" in text
        assert ("quality sampling 5% of answers, judged against revision 1, tolerance 0.1 nats/token, "
                "auto-rollback off") in text
        assert "Quality: log-likelihood/token vs the reference (nats)" in text
        assert "rev 2 degraded" in text and "tolerance -0.1" in text
        line = summary(app.store.deployments["code"], "code")
        degraded = next(span for span in line.spans if line.plain[span.start:span.end] == " DEGRADED ")
        assert is_red_badge(degraded.style)

        replicas = app.screen.query_one(ReplicasTable)
        roles = {key: replicas.cell(key, "role").plain for key in ("200", "201", "202")}
        assert roles == {"200": "serve", "201": "serve", "202": "score"}
        assert replicas.cell("202", "revision") == "1"  # the scorer runs the reference revision

        # A deployment with sampling off says so, in the policy line and the plot.
        await pilot.press("escape")
        plot = await opened(pilot, "embed")
        await until(pilot, lambda: "quality sampling is off" in screen_text(app), what="embed's empty plot")
        assert "quality sampling off" in screen_text(app)
        assert plot.labels == []


async def test_deployment_screen_says_why_there_is_no_quality_report() -> None:
    app = recorded_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.fleet_updates == len(app.feed.recording.frames))
        await opened(pilot, "ghost")
        await until(pilot, lambda: "quality report: deployment 'ghost' not found" in screen_text(app),
                    what="the report's error")
        assert "no quality report" in screen_text(app)


@pytest.fixture
def judged(plane: ControlPlane) -> Iterator[ControlPlane]:
    """`chat` at revision 2, serving on a scripted agent, with scored samples of both revisions stored the
    way the quality worker stores them: revision 1 (the reference) as good as itself, revision 2 half a nat
    per token worse and judged degraded."""
    edge = serving_agent(plane)
    with AdminClient(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("chat", "tiny", {"max_num_seqs": 4}, replicas=1)
        admin.deploy("chat", "tiny", {"max_num_seqs": 8})
    engine = make_engine(plane.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            deployment = deployments.get_deployment(session, "chat")
            for revision, loss, count in ((1, 0.0, 12), (2, -0.5, 8)):
                for i in range(count):
                    sample = quality.store_sample(session, deployment_id=deployment.id, revision=revision,
                                                  tenant_id=None, kind="chat", request={"messages": []},
                                                  answer="x")
                    served = -1.0 + loss + 0.01 * (i % 3 - 1)
                    quality.save_scores(session, sample.id, quality.Scores([1], served, 0.8, -1.0, 0.8))
            quality.judge_revision(session, deployment, 2, QualityState.DEGRADED,
                                   {"summary": "median change over 8 samples: log-likelihood -0.500"})
    finally:
        engine.dispose()
    try:
        yield plane
    finally:
        edge.close()


async def test_live_quality_report_is_polled_only_while_the_deployment_screen_is_open(
        judged: ControlPlane) -> None:
    app = live_app(judged)
    feed = app.feed
    polled: list[str] = []
    apply_quality = app.store.apply_quality

    def counted(name: str, *args: object) -> None:
        polled.append(name)
        apply_quality(name, *args)

    app.store.apply_quality = counted
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(DeploymentsTable)
        await until(pilot, lambda: table.row_data("chat") is not None, what="chat on the Fleet screen")
        badge = table.cell("chat", "quality")
        assert badge.plain == "DEGRADED" and is_red_badge(badge.style)
        await pilot.pause(0.5)
        assert polled == []  # the Fleet screen shows no report: none is asked for

        await pilot.press("tab", "enter")
        assert isinstance(app.screen, DeploymentScreen)
        plot = app.screen.query_one(QualityPlot)
        await until(pilot, lambda: plot.labels == ["rev 1 ok", "rev 2 degraded"], what="the quality plot")
        report = app.store.quality["chat"]
        assert [(r.revision, r.samples, len(r.trend), r.current) for r in report.revisions] == [
            (1, 12, 12, False), (2, 8, 8, True)]
        assert report.revisions[1].trend[0] == pytest.approx(-0.51)
        text = screen_text(app)
        assert "chat  DEGRADED  tiny  rev 2" in text
        assert ("quality sampling 1% of answers, judged against revision 1, tolerance 0.1 nats/token, "
                "auto-rollback off") in text
        await until(pilot, lambda: len(polled) >= 3, what="the report polled with the fleet")

        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)
        await pilot.pause(0.3)  # a poll under way when the screen closed may still land
        closed = len(polled)
        await pilot.pause(1.0)  # five poll intervals
        assert len(polled) == closed, "the report is still polled after its screen closed"
        assert feed._followed == {}  # noqa: SLF001


def test_the_deployment_summary_shows_an_autoscaling_policy_and_nothing_without_one() -> None:
    from llmctl.controlplane.proto import llmctl_pb2 as pb

    d = pb.Deployment(name="chat", model="smollm2-135m", revision=1, desired_replicas=2, ready_replicas=2)
    assert "autoscale" not in summary(d, "chat").plain
    d.autoscaling.CopyFrom(pb.AutoscalePolicy(min_replicas=0, max_replicas=4, mode="advisory"))
    assert "2/2 ready  none/auto  autoscale 0-4 advisory" in summary(d, "chat").plain
