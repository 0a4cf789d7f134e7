"""Nodes on SQLite and PostgreSQL: registration, heartbeats, staleness, draining."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.nodes import (
    get_node,
    heartbeat,
    list_nodes,
    mark_stale_nodes,
    register_node,
    set_node_state,
)

H100 = {"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1", "memory_total_bytes": 80 * 2**30}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def register(session: Session, name: str, **changes: object) -> None:
    fields = dict(hostname=f"{name}.local", gpus=[H100], engine_version="0.1.0", capabilities={"fp8": True})
    register_node(session, name=name, **{**fields, **changes})  # type: ignore[arg-type]


def test_register_then_reregister_updates_in_place(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        register(session, "gpu-a")
    with session_scope(db_factory) as session:
        set_node_state(session, name="gpu-a", state="draining")
    with session_scope(db_factory) as session:
        register(session, "gpu-a", engine_version="0.2.0", gpus=[H100, {**H100, "index": 1, "uuid": "GPU-2"}])
    with session_scope(db_factory) as session:
        [node] = list_nodes(session)
        assert node.engine_version == "0.2.0" and [g["uuid"] for g in node.gpus] == ["GPU-1", "GPU-2"]
        # An operator's drain holds across agent restarts; only `undrain` (set_node_state) lifts it.
        assert node.state == "draining" and node.capabilities == {"fp8": True} and node.max_replicas == 4
        events = list_events(session, kinds=["node.registered"])
        assert [e.details["previous_state"] for e in events] == [None, "draining"]


def test_bad_registrations_are_refused(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        with pytest.raises(InvalidArgument, match="gpus\\[0\\] lacks uuid"):
            register(session, "gpu-a", gpus=[{"index": 0, "name": "x", "memory_total_bytes": 1}])
        with pytest.raises(InvalidArgument, match="invalid node name"):
            register(session, "GPU_A")
        with pytest.raises(InvalidArgument, match="invalid node state 'asleep'"):
            set_node_state(session, name="gpu-a", state="asleep")
        with pytest.raises(NotFound, match="node 'ghost' is not registered"):
            heartbeat(session, name="ghost")


def test_a_node_heard_from_lately_is_not_stale_though_its_heartbeats_were_never_written(
        db_factory: sessionmaker[Session]) -> None:
    # The database was away: heartbeats arrived but their writes failed; the control plane still heard them.
    with session_scope(db_factory) as session:
        register(session, "gpu-a")
        register(session, "gpu-b")
        heartbeat(session, name="gpu-a", at=T0)
        heartbeat(session, name="gpu-b", at=T0)
    with session_scope(db_factory) as session:
        heard = {"gpu-a": T0 + timedelta(seconds=28), "gpu-b": T0 + timedelta(seconds=15)}
        stale = mark_stale_nodes(session, timeout_s=10, now=T0 + timedelta(seconds=30), heard=heard)
        assert [n.name for n in stale] == ["gpu-b"]  # heard, but longer ago than the timeout
    with session_scope(db_factory) as session:
        node = get_node(session, "gpu-a")
        assert node.state == "healthy" and node.last_heartbeat_at == T0 + timedelta(seconds=28)
        assert get_node(session, "gpu-b").state == "unhealthy"


def test_silent_nodes_go_unhealthy_and_recover_on_heartbeat(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        register(session, "gpu-a")
        register(session, "gpu-b")
        register(session, "gpu-c")
        heartbeat(session, name="gpu-a", at=T0)
        heartbeat(session, name="gpu-b", at=T0 + timedelta(seconds=25))
        heartbeat(session, name="gpu-c", at=T0)
        set_node_state(session, name="gpu-c", state="draining")
    with session_scope(db_factory) as session:
        stale = mark_stale_nodes(session, timeout_s=10, now=T0 + timedelta(seconds=30))
        assert [n.name for n in stale] == ["gpu-a"]  # draining nodes are left to the operator
    with session_scope(db_factory) as session:
        assert mark_stale_nodes(session, timeout_s=10, now=T0 + timedelta(seconds=31)) == []
        assert get_node(session, "gpu-a").state == "unhealthy"
        heartbeat(session, name="gpu-a", at=T0 + timedelta(seconds=40))
        heartbeat(session, name="gpu-c", at=T0 + timedelta(seconds=40))
    with session_scope(db_factory) as session:
        assert {n.name: n.state for n in list_nodes(session)} == {
            "gpu-a": "healthy",
            "gpu-b": "healthy",
            "gpu-c": "draining",
        }
        kinds = [e.kind for e in list_events(session) if e.node_name == "gpu-a"]
        assert kinds == ["node.registered", "node.unhealthy", "node.healthy"]
        with pytest.raises(InvalidArgument, match="timezone-aware"):
            heartbeat(session, name="gpu-a", at=datetime(2026, 3, 1, 12, 0))
