"""Every screen of the dashboard against a live control plane: a real agent daemon whose GPUs are faked at
the NVML edge (one GPU without power readings), and a scripted agent that serves a deployment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmctl.agent.daemon import AgentConfig, AgentDaemon
from llmctl.agent.fake_nvml import GIB, FakeGpu, FakeNvml
from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.server import ControlPlane
from llmctl.tui.screens.deployment import DeploymentScreen
from llmctl.tui.screens.events import EventsScreen
from llmctl.tui.screens.fleet import FleetScreen
from llmctl.tui.widgets.deployments_table import DeploymentsTable
from llmctl.tui.widgets.events_table import DeploymentEventsTable, EventsTable
from llmctl.tui.widgets.nodes_table import NodesTable
from llmctl.tui.widgets.replicas_table import ReplicasTable
from tests.tui.conftest import SIZE, live_app, screen_text, serving_agent, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def fleet(plane: ControlPlane) -> Iterator[ControlPlane]:
    gpus = [FakeGpu(utilization_percent=73, memory_used_bytes=30 * GIB, temperature_c=61, power_watts=250),
            FakeGpu(name="NVIDIA L4", memory_total_bytes=24 * GIB, memory_used_bytes=6 * GIB,
                    utilization_percent=12, unsupported={"power", "power_limit"})]
    # max_replicas=0: this node only reports telemetry; the scripted agent takes the replicas.
    daemon = AgentDaemon(AgentConfig(control_plane=plane.grpc_address, join_token=plane.join_token,
                                     node_name="gpu-box", max_replicas=0, telemetry_interval_s=0.2,
                                     nvml=FakeNvml(gpus)))
    daemon.start()
    edge = serving_agent(plane)
    with AdminClient(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("chat", "tiny", {"max_num_seqs": 4}, replicas=1)
        admin.deploy("chat", "tiny", {"max_num_seqs": 8})
    try:
        yield plane
    finally:
        edge.close()
        daemon.stop()


def nodes_row(app, key: str) -> tuple[str, ...] | None:
    row = app.screen.query_one(NodesTable).row_data(key)
    return None if row is None else tuple(str(getattr(c, "plain", c)) for c in row)


async def test_fleet_deployment_and_events_screens_show_the_live_fleet(fleet: ControlPlane) -> None:
    app = live_app(fleet)
    async with app.run_test(size=SIZE) as pilot:
        # Fleet: the real agent's GPUs with their NVML readings, N/A where the GPU has no power reading.
        await until(pilot, lambda: nodes_row(app, "gpu-box/0") and "61°C" in nodes_row(app, "gpu-box/0"),
                    what="the agent's first GPU")
        first = nodes_row(app, "gpu-box/0")
        assert first[0] == "gpu-box" and first[1] == "0 H100 80GB HBM3"
        assert first[2].endswith(" 73%") and first[3].endswith("30.0/80.0G") and first[5] == "250/700W"
        second = nodes_row(app, "gpu-box/1")
        assert second[1] == "1 L4" and second[5] == "N/A" and second[2].endswith(" 12%")
        await until(pilot, lambda: "1/1" in str(app.screen.query_one(DeploymentsTable).row_data("chat")),
                    what="chat ready on the scripted agent")
        text = screen_text(app)
        assert "● connected" in text and f"{fleet.grpc_address}" in text and "2 nodes · 1 deployments" in text
        assert "edge-1" in text and "healthy" in text

        # Deployment: Enter on its row.
        await pilot.press("tab")
        assert app.focused is app.screen.query_one(DeploymentsTable)
        await pilot.press("enter")
        assert isinstance(app.screen, DeploymentScreen)
        await until(pilot, lambda: "max_num_seqs" in screen_text(app), what="the revision diff")
        # Two replicas once the rollout is done: revision 2 serving, and revision 1 (the quality reference,
        # sampling being on by default) scoring.
        await until(pilot, lambda: "Replicas (2)" in screen_text(app),
                    what="the serving and scoring replicas")
        text = screen_text(app)
        assert "Config diff: revision 1 → 2" in text
        assert "edge-1" in text and "ready" in text and "http://127.0.0.1:19" in text
        events = app.screen.query_one(DeploymentEventsTable)  # scrolled to the newest of its events
        kinds = [events.cell(str(key.value), "kind").plain for key in events.rows]
        assert "deployment.deployed" in kinds and kinds[-1] in text
        table = app.screen.query_one(ReplicasTable)
        roles = sorted((table.cell(str(key.value), "revision"), table.cell(str(key.value), "role").plain)
                       for key in table.rows)
        assert roles == [("1", "score"), ("2", "serve")]

        # Esc goes back; `e` opens the live audit log.
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)
        await pilot.press("e")
        assert isinstance(app.screen, EventsScreen)
        table = app.screen.query_one(EventsTable)
        await until(pilot, lambda: table.row_count >= 4, what="the audit log")
        assert "node.registered" in screen_text(app)

        # Live: a change made elsewhere streams in.
        with AdminClient(fleet.grpc_address, fleet.admin_token) as admin:
            admin.scale("chat", 2)
        await until(pilot, lambda: "deployment.scaled" in screen_text(app), what="the scale event")

        # `?` help, and the `:` palette to get back to the Fleet screen.
        await pilot.press("question_mark")
        await until(pilot, lambda: "command palette" in screen_text(app), what="the help")
        await pilot.press("escape")
        await pilot.press("colon")
        await pilot.press(*"fleet")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="the Fleet screen")


async def test_filter_narrows_the_rows_and_esc_clears_it(fleet: ControlPlane) -> None:
    app = live_app(fleet)
    async with app.run_test(size=SIZE) as pilot:
        nodes = app.screen.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 3, what="two GPUs and a host-only node")
        await pilot.press("slash", *"edge")
        await until(pilot, lambda: nodes.row_count == 1)
        assert nodes.cursor_key == "edge-1/-"
        assert app.screen.query_one(DeploymentsTable).row_count == 0
        await pilot.press("enter")  # keeps the filter; data keeps flowing into the filtered table
        await pilot.pause(0.5)
        assert nodes.row_count == 1
        await pilot.press("escape")
        await until(pilot, lambda: nodes.row_count == 3, what="the filter cleared")

        await pilot.press("e")
        events = app.screen.query_one(EventsTable)
        await until(pilot, lambda: events.row_count >= 4, what="the audit log")
        total = events.row_count
        await pilot.press("slash", *"rollout")
        await until(pilot, lambda: events.row_count < total)
        assert all("rollout" in " ".join(map(str, (getattr(c, "plain", c) for c in events.get_row_at(i))))
                   for i in range(events.row_count))
        assert "Events (" in screen_text(app) and "shown)" in screen_text(app)
