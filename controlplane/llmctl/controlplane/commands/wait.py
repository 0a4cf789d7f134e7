"""Waiting for a rollout: until a revision serves on every desired replica, or the control plane gives up.

Used by `llmctl deploy/rollback/scale --wait` and `llmctl up`. It reads what any operator can read
(GetDeployment and the deployment's events), so it behaves the same for every client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmctl.controlplane.errors import ControlPlaneError

if TYPE_CHECKING:
    from llmctl.controlplane.client import AdminClient

POLL_S = 0.5
NO_NODE_GRACE_S = 10.0
"""How long a fleet may have no healthy node before waiting is pointless (agents reconnect within it)."""
STUCK_GRACE_S = 5.0
"""After the control plane said it cannot place replicas: how long nothing may move (no replica of the
revision starting, none draining to free a slot) before waiting is pointless. A rolling update on a
nearly full fleet places one replica at a time, with short gaps between."""
IN_FLIGHT = ("PENDING", "STARTING", "FAILED")  # FAILED ones are retried until the control plane gives up
ROLLOUT_FAILED = "rollout.failed"
UNSCHEDULABLE = "deployment.unschedulable"


class RolloutFailed(ControlPlaneError):
    """The control plane gave up on the revision (and rolled back); the message is its reason."""

    grpc_code = "ABORTED"
    http_status = 409


class Unschedulable(ControlPlaneError):
    """No healthy node has room for the revision's replicas; the control plane keeps trying."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


class WaitTimedOut(ControlPlaneError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


def rollout_progress(deployment: Any, revision: int) -> tuple[int, int, int]:
    """(ready replicas at `revision`, desired replicas, ready replicas still at another revision); quality
    scorer and optimizer trial replicas are not among them (they serve no traffic)."""
    ready = [r for r in deployment.replicas if _state(r) == "READY" and r.role in ("serve", "")]
    new = sum(1 for r in ready if r.revision == revision)
    return new, deployment.desired_replicas, len(ready) - new


def wait_for_revision(
    client: AdminClient,
    name: str,
    revision: int,
    *,
    after_event_id: int,
    timeout_s: float,
    progress: Callable[[str], None] = lambda _line: None,
) -> Any:
    """Block until `revision` of `name` is ready on exactly the desired replicas and no other revision
    serves; returns the Deployment. RolloutFailed when the control plane reports the rollout failed or
    moved the deployment off `revision`; Unschedulable when no node has room for the replicas and nothing
    moves any more, or no node is healthy (waiting would not help until the fleet changes); WaitTimedOut
    after timeout_s."""
    started = time.monotonic()
    deadline = started + timeout_s
    cursor, last_line, healthy_seen, moving_seen = after_event_id, "", started, started
    unschedulable = ""
    while True:
        for event in client.list_events(after_id=cursor, deployment=name):
            cursor = event.id
            if event.kind == ROLLOUT_FAILED and _about(event, revision):
                raise RolloutFailed(event.message)
            if event.kind == UNSCHEDULABLE and _about(event, revision):
                unschedulable = event.message
                progress(f"{name}: {event.message}")
        deployment = client.get_deployment(name)
        if deployment.revision != revision:
            # The reconciler records rollout.failed in the transaction that rolls back, which may have
            # committed between reading the events above and the deployment: its reason is the answer.
            for event in client.list_events(after_id=cursor, deployment=name):
                if event.kind == ROLLOUT_FAILED and _about(event, revision):
                    raise RolloutFailed(event.message)
            raise RolloutFailed(
                f"{name} moved from revision {revision} to {deployment.revision} while waiting "
                f"(see `llmctl events --deployment {name}`)"
            )
        new, desired, old = rollout_progress(deployment, revision)
        line = f"{name} revision {revision}: {new}/{desired} replicas ready" + (
            f", {old} of an older revision still serving" if old else ""
        )
        if line != last_line:
            progress(line)
            last_line = line
        if new == desired and old == 0:
            return deployment
        if _moving(deployment, revision):
            moving_seen = time.monotonic()
        elif unschedulable and time.monotonic() - moving_seen > STUCK_GRACE_S:
            raise Unschedulable(
                f"{unschedulable} (the control plane keeps trying; `llmctl nodes` shows the fleet)"
            )
        if any(node.state == "healthy" for node in client.list_nodes()):
            healthy_seen = time.monotonic()
        elif time.monotonic() - healthy_seen > NO_NODE_GRACE_S:
            raise Unschedulable(
                f"no healthy node to run {name} on ({line}); start an agent "
                "(`llmctl agent`) or see `llmctl nodes`"
            )
        if time.monotonic() >= deadline:
            raise WaitTimedOut(
                f"timed out after {timeout_s:g} s: {line}; the control plane keeps trying "
                f"(watch `llmctl events --deployment {name} --follow`)"
            )
        time.sleep(POLL_S)


def _moving(deployment: Any, revision: int) -> bool:
    """Whether a replica of `revision` is on its way up, or one is draining (its slot frees soon)."""
    return any(
        (r.revision == revision and _state(r) in IN_FLIGHT) or _state(r) == "DRAINING"
        for r in deployment.replicas
    )


def _about(event: Any, revision: int) -> bool:
    """Whether an event concerns `revision` (events that name no revision are taken to)."""
    try:
        named = json.loads(event.details_json or "{}").get("revision")
    except (ValueError, AttributeError):
        return True
    return named is None or named == revision


def _state(replica: Any) -> str:
    from llmctl.controlplane.proto import llmctl_pb2 as pb

    return pb.ReplicaState.Name(replica.state).removeprefix("REPLICA_STATE_")
