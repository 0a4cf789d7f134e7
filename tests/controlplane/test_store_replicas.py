"""Replica records on SQLite and PostgreSQL: placement, state changes and the events they record."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services.deployments import deploy, get_deployment
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.nodes import get_node
from llmctl.controlplane.services.replicas import create_replica, get_replica, list_replicas, update_replica
from tests.controlplane.test_store_nodes import register


def test_replica_lifecycle_records_ready_and_failed(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        register(session, "gpu-a")
        deployment, revision, _ = deploy(session, name="chat", model="smollm2-135m", engine_config={})
        first = create_replica(
            session, deployment=deployment, revision=revision, node=get_node(session, "gpu-a")
        )
        second = create_replica(session, deployment=deployment, revision=revision, node=None)
    assert first.state == "pending" and second.node is None
    with session_scope(db_factory) as session:
        update_replica(session, first.id, state="starting")
        update_replica(session, first.id, state="ready", url="http://gpu-a.local:9000")
        update_replica(session, second.id, node=get_node(session, "gpu-a"), state="starting")
        update_replica(session, second.id, state="failed", error="CUDA out of memory", restarts=1)
    with session_scope(db_factory) as session:
        assert [r.id for r in list_replicas(session, deployment_name="chat", states=["ready"])] == [first.id]
        assert len(list_replicas(session, node_name="gpu-a")) == 2
        assert list_replicas(session, deployment_name="other") == []
        failed = get_replica(session, second.id)
        assert (failed.state, failed.error, failed.restarts) == ("failed", "CUDA out of memory", 1)
        kinds = [e.kind for e in list_events(session, kinds=["replica.ready", "replica.failed"])]
        assert kinds == ["replica.ready", "replica.failed"]
        assert "CUDA out of memory" in list_events(session, kinds=["replica.failed"])[0].message
        with pytest.raises(InvalidArgument, match="invalid replica state 'running'"):
            update_replica(session, first.id, state="running")
        with pytest.raises(NotFound, match="replica 999 not found"):
            get_replica(session, 999)


def test_replica_of_another_deployments_revision_is_refused(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        _, revision, _ = deploy(session, name="chat", model="m", engine_config={})
        other, _, _ = deploy(session, name="code", model="m", engine_config={})
        with pytest.raises(InvalidArgument, match="another deployment"):
            create_replica(session, deployment=other, revision=revision, node=None)
        assert get_deployment(session, "chat").replicas == []
