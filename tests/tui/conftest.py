"""Dashboard tests: a real in-process control plane on SQLite (gRPC on loopback), real agents with fake
GPUs at the NVML edge or scripted agents over real gRPC, and the App driven by Textual's Pilot.

Helpers: `live_app(plane)` builds the App on a LiveFeed polling fast; `until(pilot, condition)` waits for
what a user would wait for on screen; `screen_text(app)` is the screen as the user sees it, as text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.server import ControlPlane
from llmctl.tui.app import DashboardApp
from llmctl.tui.feed import LiveFeed
from tests.controlplane.harness import ScriptedAgent, running_control_plane

SIZE = (120, 40)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times on screen in UTC, so recorded screens read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path / "cp") as control_plane:
        yield control_plane


def live_app(plane: ControlPlane, token: str | None = None) -> DashboardApp:
    return DashboardApp(LiveFeed(plane.grpc_address, token or plane.admin_token, poll_interval_s=0.2,
                                 retry_max_s=0.3, call_timeout_s=5))


async def until(pilot: Pilot[Any], condition: Callable[[], Any], timeout: float = 10.0,
                what: str = "the screen to show it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def screen_text(app: Any) -> str:
    """The screen as plain text, the way a user reads it (dialogs over their screen included)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    # What App.export_screenshot draws, as text instead of SVG.
    console.print(app.screen._compositor.render_update(  # noqa: SLF001
        full=True, screen_stack=app._background_screens))  # noqa: SLF001
    return console.export_text()


def serving_agent(plane: ControlPlane, name: str = "edge-1") -> ScriptedAgent:
    """An agent over real gRPC that runs no processes: every replica it is given reports READY at once,
    with engine stats, and every replica it is told to stop reports STOPPED."""

    def on_command(message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "start_replica":
            start = message.start_replica
            agent.serve(start, url=f"http://127.0.0.1:{19000 + start.replica_id}")
            stats = pb.ReplicaStats(replica_id=start.replica_id, running=1, waiting=2, kv_cache_usage=0.25,
                                    ttft_p95_s=0.125, tokens_per_s=150.0, requests_total=10)
            agent.send(pb.AgentMessage(telemetry=pb.TelemetrySample(
                sent_at=time.time(), source=pb.TELEMETRY_SOURCE_HOST, replicas=[stats],
                host=pb.HostSample(cpu_percent=5, memory_used_bytes=1 << 30, memory_total_bytes=8 << 30))))
        elif kind == "stop_replica":
            agent.report(message.stop_replica.replica_id, pb.REPLICA_STATE_STOPPED)

    agent = ScriptedAgent(plane, name, max_replicas=8, on_command=on_command)
    return agent.join()
