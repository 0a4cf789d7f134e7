"""The Deployment screen's optimization panel: the newest run's status line and its steps, following the run as
it advances, from a recorded run played stage by stage and from a real control plane whose optimizer runs
against a scripted agent; and what it says when a deployment has never been optimized."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text
from textual.pilot import Pilot

from llmctl.tui.app import DashboardApp
from llmctl.tui.feed import LiveFeed
from llmctl.tui.recorded import RUN_STARTED, RecordedFeed, demo_frame, demo_recording
from llmctl.tui.recorded_optimization import demo_optimization
from llmctl.tui.screens.deployment import DeploymentScreen
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.keyed_table import plain
from llmctl.tui.widgets.optimization_panel import OptimizationPanel, StepsTable
from tests.controlplane.optimizer_fleet import optimizing_fleet, start
from tests.tui.conftest import SIZE, screen_text, until

pytestmark = pytest.mark.anyio

COLUMNS = ("technique", "state", "tok_s", "gain", "quality", "reason")


async def opened(pilot: Pilot[None], name: str) -> OptimizationPanel:
    """Opens deployment `name`'s screen; its optimization panel once the screen is drawn."""
    app = pilot.app
    app.open_deployment(name)
    panels = await until(pilot, lambda: isinstance(app.screen, DeploymentScreen)
                         and app.screen.deployment == name and list(app.screen.query(OptimizationPanel)),
                         what=f"{name}'s screen")
    return panels[0]


def steps_of(panel: OptimizationPanel) -> dict[str, tuple[str, ...]]:
    """Each step's row as it reads, by technique."""
    table = panel.query_one(StepsTable)
    rows = {}
    for key in sorted(table.rows, key=lambda k: int(k.value)):
        cells = tuple(plain(table.cell(str(key.value), column)) for column in COLUMNS)
        rows[cells[0]] = cells[1:]
    return rows


async def test_the_trail_shows_every_step_and_follows_the_run_as_it_advances() -> None:
    recording = demo_recording()
    recording.optimizations["chat"] = demo_optimization("chat", 1, created_at=RUN_STARTED)
    feed = RecordedFeed(recording)
    app = DashboardApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.fleet_updates == len(recording.frames), what="the recording")
        panel = await opened(pilot, "chat")
        table = panel.query_one(StepsTable)
        await until(pilot, lambda: table.row_count == 5, what="the run's steps")
        assert panel.status.plain == ("running  goal throughput  bottleneck kv-memory  step 2 (max-num-seqs): "
                                      "measurement 4 of 7 (candidate)  5m 25s so far")
        assert steps_of(panel) == {
            "baseline": ("kept", "1482.6", "-", "-", "the starting point: revision 1"),
            "prefix-caching": ("skipped", "-", "-", "-", "prefix caching is already on"),
            "max-num-seqs": ("running", "-", "-", "unchanged", "trying max_num_seqs=128"),
            "kv-cache-size": ("pending", "-", "-", "-", "-"),
            "awq": ("pending", "-", "-", "-", "-"),
        }
        text = screen_text(app)
        assert "Optimization run 7, started 22:10:50" in text
        assert "step 2 (max-num-seqs): measurement 4 of 7 (candidate)" in text

        async def advance(stage: int) -> None:
            """The control plane's next answer: the run at `stage`, with the next poll."""
            recording.optimizations["chat"] = demo_optimization("chat", stage, created_at=RUN_STARTED)
            feed.play(demo_frame(len(recording.frames), nodes=5, deployments=4))
            await until(pilot, lambda: app.fleet_updates == len(recording.frames), what=f"stage {stage}")

        await advance(2)
        seqs, pool = steps_of(panel)["max-num-seqs"], steps_of(panel)["kv-cache-size"]
        assert seqs[:4] == ("rejected", "1501.3", "+1.2% (-2.9..+5.3)", "unchanged")
        assert seqs[4].startswith("no gain beyond noise: throughput +1.2%")
        assert pool[:4] == ("running", "-", "-", "unchanged") and pool[4].startswith("trying num_kv_blocks=3072")

        await advance(3)
        assert steps_of(panel)["kv-cache-size"][:4] == ("kept", "2046.8", "+38.4% (+31.1..+45.7)", "unchanged")
        assert steps_of(panel)["awq"][0] == "running"
        assert "step 4 (awq): quality eval against revision 1" in panel.status.plain

        # The last stage changes one row: only its changed cells are rewritten, the rest stay as drawn.
        rewritten = table.cells_updated
        await advance(4)
        awq = steps_of(panel)["awq"]
        assert awq[:4] == ("rejected", "-", "-", "top-1 18.89%")
        assert awq[4].startswith("quality: perplexity +14.17% > 2%")
        assert table.cells_updated - rewritten == 3  # awq's state, quality drop and reason
        quality = table.cell("4", "quality")
        assert isinstance(quality, Text) and quality.style == "red"  # beyond the run's 2% limit
        assert panel.status.plain == ("succeeded  goal throughput  bottleneck kv-memory  kept kv-cache-size; "
                                      "revision 2 is rolling out  5m 41s")
        assert "kept kv-cache-size; revision 2 is rolling out" in screen_text(app)


async def test_a_deployment_never_optimized_says_how_to_start_a_run() -> None:
    app = DashboardApp(RecordedFeed(demo_recording()))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.screen.query_one(DeploymentsTable).row_count == 4)
        panel = await opened(pilot, "code")
        hint = "no optimization runs; `llmctl optimize code --goal throughput` starts one"
        await until(pilot, lambda: hint in screen_text(app), what="the hint")
        assert not panel.query_one(StepsTable).display
        assert panel.border_title == "Optimization"


async def test_live_run_appears_on_the_open_screen_and_is_followed_to_its_end(tmp_path: Path) -> None:
    with optimizing_fleet(tmp_path, hold=True) as (plane, admin, fleet):
        app = DashboardApp(LiveFeed(plane.grpc_address, plane.admin_token, poll_interval_s=0.2,
                                    retry_max_s=0.3, call_timeout_s=5))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.screen.query_one(DeploymentsTable).row_data("chat") is not None)
            panel = await opened(pilot, "chat")
            await until(pilot, lambda: "no optimization runs; `llmctl optimize chat --goal throughput` starts one"
                        in screen_text(app), what="the hint")

            run = start(admin)  # its measurements are held: the run waits on its baseline's first
            await until(pilot, lambda: steps_of(panel).get("baseline", ("",))[0] == "running",
                        what="the baseline measuring")
            assert panel.border_title.startswith(f"Optimization run {run.id}, started ")
            # The run's line follows on its next poll: a clean-clone CI run once caught the baseline's row running
            # while the line still said "starting: choosing a node for the trial replicas".
            await until(pilot, lambda: panel.status.plain.startswith(
                "running  goal throughput  bottleneck not named yet  baseline: "), what="the run's baseline line")

            fleet.hold.clear()
            for held in list(fleet.held):
                fleet.answer(held)
            await until(pilot, lambda: panel.status.plain.startswith("succeeded"), timeout=60,
                        what="the run to end")
            steps = steps_of(panel)
            assert [name for name in steps] == ["baseline", "max-num-batched-tokens", "kv-cache-size", "kv-int8",
                                                "awq"]
            assert steps["kv-cache-size"][0] == "kept" and steps["kv-cache-size"][2].startswith("+")
            assert steps["max-num-batched-tokens"][0] == "rejected"
            assert steps["awq"][0] == "rejected" and steps["awq"][3].startswith("top-1 ")
            assert "bottleneck kv-memory" in panel.status.plain
            assert "kept kv-cache-size; revision 2 is rolling out" in panel.status.plain
