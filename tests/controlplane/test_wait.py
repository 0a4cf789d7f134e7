"""wait_for_revision's answer when a rollout fails between its reads (the race is timing, so the client is
scripted here; the real processes' path is tests/controlplane/test_cli_rollout.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from llmctl.controlplane.commands.wait import RolloutFailed, wait_for_revision


class RacingClient:
    """The reconciler fails revision 2 and rolls back to 1 right after the waiter read the events."""

    def __init__(self) -> None:
        self.failed = SimpleNamespace(
            id=7, kind="rollout.failed", details_json=json.dumps({"revision": 2, "rolled_back_to": 1}),
            message="rollout of chat revision 2 failed: the replica exited; rolling back to revision 1",
        )
        self.event_reads = 0

    def list_events(self, after_id: int, deployment: str):
        self.event_reads += 1
        return [] if self.event_reads == 1 else [e for e in [self.failed] if e.id > after_id]

    def get_deployment(self, name: str):
        return SimpleNamespace(revision=1, desired_replicas=1, replicas=[])

    def list_nodes(self):
        return [SimpleNamespace(state="healthy")]


def test_a_rollout_that_fails_between_reads_reports_its_reason_not_a_move():
    with pytest.raises(RolloutFailed, match="rollout of chat revision 2 failed: .*rolling back to revision 1"):
        wait_for_revision(RacingClient(), "chat", 2, after_event_id=0, timeout_s=5)


def test_a_move_with_no_failed_rollout_says_the_deployment_moved():
    client = RacingClient()
    client.failed.details_json = json.dumps({"revision": 3})  # another revision's failure: not ours
    with pytest.raises(RolloutFailed, match="chat moved from revision 2 to 1 while waiting"):
        wait_for_revision(client, "chat", 2, after_event_id=0, timeout_s=5)
