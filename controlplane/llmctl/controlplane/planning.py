"""The reconciler's rules as pure functions (no SQL, no I/O): which replicas a deployment starts and
stops on the way to its desired state, and on which nodes new ones go. Unit-tested in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One alive replica of a deployment, as planning sees it."""

    replica_id: int
    revision_id: int
    ready: bool
    on_draining_node: bool = False


@dataclass(frozen=True)
class Plan:
    start: int
    """New replicas of the current revision to place."""
    stop: tuple[tuple[int, str], ...]
    """(replica id, why), in the order to stop them."""


def plan_deployment(desired: int, revision_id: int, members: list[Member], *, may_start: bool = True) -> Plan:
    """What brings `members` to `desired` READY replicas of `revision_id` without dropping below what
    serves now: replicas of other revisions or on draining nodes stay while they are still needed."""
    wanted = [m for m in members if m.revision_id == revision_id and not m.on_draining_node]
    leaving = [m for m in members if m not in wanted]
    stop: list[tuple[int, str]] = []
    if len(wanted) > desired:
        # Scale down: replicas not serving yet go first, then the newest.
        excess = sorted(wanted, key=lambda m: (m.ready, -m.replica_id))[: len(wanted) - desired]
        stop += [(m.replica_id, f"scaled down to {desired}") for m in excess]
        wanted = [m for m in wanted if m not in excess]
    start = max(0, desired - len(wanted)) if may_start else 0
    still_needed = max(0, desired - sum(m.ready for m in wanted))
    keep = sorted((m for m in leaving if m.ready), key=lambda m: m.replica_id)[:still_needed]
    for m in leaving:
        if m in keep:
            continue
        if m.on_draining_node and m.revision_id == revision_id:
            why = "its node is draining and a replacement is ready" if m.ready else "its node is draining"
        else:
            why = "a replica of the current revision is ready in its place" if m.ready else "old revision"
        stop.append((m.replica_id, why))
    return Plan(start, tuple(stop))


@dataclass
class NodeRoom:
    name: str
    used: int
    capacity: int


def place(count: int, rooms: list[NodeRoom]) -> list[str]:
    """Node names for `count` new replicas: each on the node with the fewest replicas that has room
    (ties by name); fewer names than asked when the fleet is full. Updates `used`."""
    chosen = []
    for _ in range(count):
        free = [room for room in rooms if room.used < room.capacity]
        if not free:
            break
        room = min(free, key=lambda r: (r.used, r.name))
        room.used += 1
        chosen.append(room.name)
    return chosen
