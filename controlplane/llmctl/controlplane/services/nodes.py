"""GPU hosts: registration, heartbeats, health, draining."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import Node, NodeState, utcnow
from llmctl.controlplane.errors import Conflict, InvalidArgument, NotFound
from llmctl.controlplane.services import check_aware, check_count, check_name, locks_rows
from llmctl.controlplane.services.events import record_event

GPU_FIELDS = ("index", "name", "uuid", "memory_total_bytes")


def register_node(
    session: Session,
    *,
    name: str,
    hostname: str,
    gpus: list[dict[str, Any]],
    engine_version: str,
    capabilities: dict[str, Any],
    max_replicas: int = 4,
) -> Node:
    """Create the node, or refresh it when its agent restarts (same name); it is healthy from now,
    unless an operator drained it: a drain holds until `undrain`, across agent restarts."""
    check_name("node", name)
    check_count("max_replicas", max_replicas, 0)
    if not isinstance(hostname, str) or not hostname:
        raise InvalidArgument("hostname must be a non-empty string")
    _check_gpus(gpus)
    if not isinstance(capabilities, dict):
        raise InvalidArgument(f"capabilities must be a mapping, got {type(capabilities).__name__}")
    now = utcnow()
    node = _find(session, name, for_update=True)
    previous_state = node.state if node is not None else None
    if node is None:
        node = Node(name=name, registered_at=now)
        session.add(node)
    node.hostname = hostname
    node.gpus = [dict(gpu) for gpu in gpus]
    node.engine_version = engine_version
    node.capabilities = dict(capabilities)
    node.max_replicas = max_replicas
    node.state = NodeState.DRAINING if previous_state == NodeState.DRAINING else NodeState.HEALTHY
    node.last_heartbeat_at = now
    try:
        session.flush()
    except IntegrityError as e:
        raise Conflict(f"node {name!r} was registered twice at the same time; retry") from e
    again = "re-registered" if previous_state is not None else "registered"
    record_event(
        session,
        kind="node.registered",
        message=f"node {name} ({hostname}) {again} with {len(gpus)} GPU(s), engine {engine_version}",
        node_name=name,
        actor=name,
        details={
            "hostname": hostname,
            "gpus": len(gpus),
            "engine_version": engine_version,
            "previous_state": previous_state.value if previous_state is not None else None,
        },
    )
    return node


def _check_gpus(gpus: object) -> None:
    if not isinstance(gpus, list):
        raise InvalidArgument(f"gpus must be a list of GPU descriptions, got {type(gpus).__name__}")
    for position, gpu in enumerate(gpus):
        missing = [field for field in GPU_FIELDS if not isinstance(gpu, dict) or field not in gpu]
        if missing:
            raise InvalidArgument(f"gpus[{position}] lacks {', '.join(missing)}")


def heartbeat(session: Session, *, name: str, at: datetime | None = None) -> Node:
    """Note the agent is alive. An unhealthy node becomes healthy again; a draining one stays draining."""
    check_aware("at", at)
    node = get_node(session, name)
    node.last_heartbeat_at = at or utcnow()
    if node.state == NodeState.UNHEALTHY:
        node.state = NodeState.HEALTHY
        session.flush()
        record_event(
            session,
            kind="node.healthy",
            message=f"node {name} is sending heartbeats again",
            node_name=name,
            actor=name,
        )
    session.flush()
    return node


def mark_stale_nodes(session: Session, *, timeout_s: float, now: datetime | None = None,
                     heard: Mapping[str, datetime] | None = None) -> list[Node]:
    """Healthy nodes silent for longer than `timeout_s` become unhealthy; returns them.

    heard: when this process last received anything from each node's agent. A heartbeat whose write failed
    (the database was away) is not in last_heartbeat_at, but the agent was alive: a node heard from since
    the cutoff is not stale, and its last_heartbeat_at catches up instead."""
    if timeout_s <= 0:
        raise InvalidArgument(f"timeout_s must be > 0, got {timeout_s}")
    now = check_aware("now", now) or utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    for name, at in (heard or {}).items():
        if at > cutoff:
            session.execute(update(Node).where(Node.name == name, Node.last_heartbeat_at < cutoff)
                            .values(last_heartbeat_at=at))
    query = (
        select(Node)
        .where(Node.state == NodeState.HEALTHY, Node.last_heartbeat_at < cutoff)
        .order_by(Node.name)
    )
    if locks_rows(session):
        # SKIP LOCKED: a node whose heartbeat is being written right now is not stale.
        query = query.with_for_update(skip_locked=True)
    stale = list(session.scalars(query))
    for node in stale:
        node.state = NodeState.UNHEALTHY
        silent_s = (now - node.last_heartbeat_at).total_seconds()
        record_event(
            session,
            kind="node.unhealthy",
            message=f"node {node.name} missed heartbeats for {silent_s:.0f}s (limit {timeout_s:g}s)",
            node_name=node.name,
            details={"last_heartbeat_at": node.last_heartbeat_at.isoformat(), "timeout_s": timeout_s},
        )
    session.flush()
    return stale


def set_node_state(session: Session, *, name: str, state: str, actor: str = "admin") -> Node:
    """Set a node's state by hand, e.g. draining before maintenance or healthy after it."""
    try:
        new_state = NodeState(state)
    except ValueError:
        allowed = ", ".join(s.value for s in NodeState)
        raise InvalidArgument(f"invalid node state {state!r}: use one of {allowed}") from None
    node = get_node(session, name, for_update=True)
    if node.state != new_state:
        before = node.state
        node.state = new_state
        session.flush()
        record_event(
            session,
            kind=f"node.{new_state.value}",
            message=f"node {name} set from {before.value} to {new_state.value}",
            node_name=name,
            actor=actor,
            details={"from": before.value, "to": new_state.value},
        )
    return node


def get_node(session: Session, name: str, *, for_update: bool = False) -> Node:
    node = _find(session, name, for_update=for_update)
    if node is None:
        known = list(session.scalars(select(Node.name).order_by(Node.name).limit(21)))
        listing = (
            ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none registered yet"
        )
        raise NotFound(f"node {name!r} is not registered; known nodes: {listing}")
    return node


def list_nodes(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).order_by(Node.name)))


def _find(session: Session, name: str, *, for_update: bool = False) -> Node | None:
    query = select(Node).where(Node.name == name)
    if for_update and locks_rows(session):
        query = query.with_for_update()
    return session.scalars(query).one_or_none()
