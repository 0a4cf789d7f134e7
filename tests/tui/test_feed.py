"""The live feed against a real control plane: the audit log's backlog arrives in merged batches (not one
message per event), only the newest `backlog` entries are loaded, and new ones stream in after them."""

from __future__ import annotations

import time

import pytest

from llmctl.controlplane.client import AdminClient
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.server import ControlPlane
from llmctl.tui.app import DashboardApp
from llmctl.tui.feed import LiveFeed
from llmctl.tui.messages import EventMailbox, EventsArrived
from llmctl.tui.widgets.events_table import EventsTable
from tests.tui.conftest import SIZE, until

pytestmark = pytest.mark.anyio


async def test_backlog_is_bounded_and_bursts_arrive_in_few_messages(plane: ControlPlane) -> None:
    with AdminClient(plane.grpc_address, plane.admin_token) as admin:
        admin.deploy("chat", "tiny", {}, replicas=0)
        for count in range(1, 151):
            admin.scale("chat", count % 3)  # ends at 0: nothing left for the reconciler to report
        time.sleep(0.5)
        newest = admin.last_event_id()
    assert newest > 150

    app = DashboardApp(LiveFeed(plane.grpc_address, plane.admin_token, poll_interval_s=0.2, backlog=100))
    batches: list[int] = []  # the size of each batch the App took in (one per EventsArrived message)
    add_events = app.store.add_events

    def counted(events: list[pb.Event]) -> list[pb.Event]:
        batches.append(len(events))
        return add_events(events)

    app.store.add_events = counted
    async with app.run_test(size=SIZE) as pilot:
        # A busy UI (blocked here for a second) while the backlog streams in: the events queue up in the
        # feed's mailbox and arrive in a few messages instead of one message each.
        app.call_next(lambda: time.sleep(1.0))
        await until(pilot, lambda: app.store.last_event_id == newest, what="the backlog")
        assert [e.id for e in app.store.events] == list(range(newest - 99, newest + 1))
        assert sum(batches) == 100 and len(batches) <= 10, f"{batches}: bursts are not merged"

        with AdminClient(plane.grpc_address, plane.admin_token) as admin:
            admin.deploy("code", "tiny", {}, replicas=0)
        await until(pilot, lambda: any(e.kind == "deployment.deployed" and e.deployment == "code"
                                       for e in app.store.events), what="the new event, streamed")
        await pilot.press("e")
        table = app.screen.query_one(EventsTable)
        await until(pilot, lambda: table.row_count == len(app.store.events) > 100)
        assert table.cursor_row == table.row_count - 1  # following the newest, like tail -f


def test_mailbox_hands_a_burst_to_the_ui_as_one_batch() -> None:
    mailbox = EventMailbox()
    events = [pb.Event(id=i) for i in range(1, 6)]
    posted = [batch for e in events if (batch := mailbox.put(e)) is not None]
    assert len(posted) == 1  # one message for the burst; later events joined its batch
    assert [e.id for e in EventsArrived(posted[0], mailbox).take()] == [1, 2, 3, 4, 5]
    assert mailbox.put(pb.Event(id=6)) is not None  # taken: the next event is news again
