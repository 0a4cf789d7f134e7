"""Replica records: what the reconciler asked for and what agents report back."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import (
    Deployment,
    Node,
    Replica,
    ReplicaRole,
    ReplicaState,
    Revision,
    utcnow,
)
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services import check_count
from llmctl.controlplane.services.events import record_event


def create_replica(
    session: Session, *, deployment: Deployment, revision: Revision, node: Node | None,
    role: ReplicaRole = ReplicaRole.SERVE, engine_config: dict[str, Any] | None = None,
    optimization_run_id: int | None = None,
) -> Replica:
    """A pending replica of `revision`, placed on `node` (None: not scheduled yet); a SCORE replica is the
    deployment's quality reference, a TRIAL replica an optimization run's configuration (`engine_config`,
    with the revision's model); neither is ever routed."""
    if revision.deployment_id != deployment.id:
        raise InvalidArgument(
            f"revision {revision.number} belongs to another deployment than {deployment.name!r}"
        )
    now = utcnow()
    replica = Replica(
        deployment=deployment,
        revision=revision,
        node=node,
        state=ReplicaState.PENDING,
        role=role,
        engine_config=engine_config,
        optimization_run_id=optimization_run_id,
        created_at=now,
        updated_at=now,
    )
    session.add(replica)
    session.flush()
    where = f"on node {node.name}" if node is not None else "(not placed yet)"
    what = {ReplicaRole.SCORE: "scorer replica", ReplicaRole.TRIAL: "trial replica"}.get(role, "replica")
    record_event(
        session,
        kind="replica.created",
        message=f"{what} {replica.id} of {deployment.name} revision {revision.number} {where}",
        deployment_name=deployment.name,
        node_name=node.name if node is not None else None,
        details={"replica_id": replica.id, "revision": revision.number, "role": role.value,
                 "optimization_run": optimization_run_id},
    )
    return replica


def update_replica(
    session: Session,
    replica_id: int,
    *,
    state: str | None = None,
    url: str | None = None,
    error: str | None = None,
    node: Node | None = None,
    restarts: int | None = None,
) -> Replica:
    """Change the given fields (None leaves a field as it is); becoming ready or failed is an Event."""
    new_state = _state(state) if state is not None else None
    if restarts is not None:
        check_count("restarts", restarts, 0)
    replica = get_replica(session, replica_id)
    before = replica.state
    if new_state is not None:
        replica.state = new_state
    if url is not None:
        replica.url = url
    if error is not None:
        replica.error = error
    if node is not None:
        replica.node = node
    if restarts is not None:
        replica.restarts = restarts
    replica.updated_at = utcnow()
    session.flush()
    if (
        new_state is not None
        and new_state != before
        and new_state in (ReplicaState.READY, ReplicaState.FAILED)
    ):
        name = replica.deployment.name
        where = f" on {replica.node.name}" if replica.node is not None else ""
        if new_state == ReplicaState.READY:
            message = f"replica {replica.id} of {name}{where} is ready at {replica.url}"
        else:
            message = f"replica {replica.id} of {name}{where} failed: {replica.error or 'no error given'}"
        record_event(
            session,
            kind=f"replica.{new_state.value}",
            message=message,
            deployment_name=name,
            node_name=replica.node.name if replica.node is not None else None,
            details={
                "replica_id": replica.id,
                "revision": replica.revision.number,
                "from": before.value,
                "url": replica.url,
                "error": replica.error,
            },
        )
    return replica


def list_replicas(
    session: Session,
    *,
    deployment_name: str | None = None,
    node_name: str | None = None,
    states: Collection[str] | None = None,
) -> list[Replica]:
    """Replicas matching every filter given, oldest first."""
    query = select(Replica)
    if deployment_name is not None:
        query = query.join(Replica.deployment).where(Deployment.name == deployment_name)
    if node_name is not None:
        query = query.join(Replica.node).where(Node.name == node_name)
    if states is not None:
        query = query.where(Replica.state.in_([_state(s) for s in states]))
    return list(session.scalars(query.order_by(Replica.id)))


def get_replica(session: Session, replica_id: int) -> Replica:
    replica = session.get(Replica, replica_id)
    if replica is None:
        raise NotFound(f"replica {replica_id} not found")
    return replica


def _state(state: str) -> ReplicaState:
    try:
        return ReplicaState(state)
    except ValueError:
        allowed = ", ".join(s.value for s in ReplicaState)
        raise InvalidArgument(f"invalid replica state {state!r}: use one of {allowed}") from None
