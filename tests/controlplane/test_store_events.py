"""The audit log on SQLite and PostgreSQL: filters, and ids a watcher can resume from."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.services.events import list_events, record_event


def test_events_filter_and_resume_after_an_id(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        record_event(
            session,
            kind="deployment.deployed",
            message="chat r1",
            deployment_name="chat",
            actor="alice",
            details={"revision": 1},
        )
        record_event(session, kind="node.registered", message="gpu-a", node_name="gpu-a")
        record_event(session, kind="deployment.scaled", message="chat x3", deployment_name="chat")
        record_event(session, kind="deployment.deployed", message="code r1", deployment_name="code")
    with session_scope(db_factory) as session:
        everything = list_events(session)
        assert [e.message for e in everything] == ["chat r1", "gpu-a", "chat x3", "code r1"]
        assert everything[0].actor == "alice" and everything[0].details == {"revision": 1}
        assert everything[1].actor == "system" and everything[1].details == {}
        assert everything[0].at.tzinfo is not None
        assert [e.message for e in list_events(session, deployment_name="chat")] == ["chat r1", "chat x3"]
        assert [e.message for e in list_events(session, kinds=["deployment.deployed"])] == [
            "chat r1",
            "code r1",
        ]
        assert [e.message for e in list_events(session, after_id=everything[1].id)] == ["chat x3", "code r1"]
        assert [e.message for e in list_events(session, limit=2)] == ["chat r1", "gpu-a"]
        assert [e.message for e in list_events(session, limit=2, newest=True)] == ["chat x3", "code r1"]
        newest_chat = list_events(session, deployment_name="chat", limit=1, newest=True)
        assert [e.message for e in newest_chat] == ["chat x3"]
        assert list_events(session, after_id=everything[-1].id) == []
        with pytest.raises(InvalidArgument, match="limit must be between 1 and 1000"):
            list_events(session, limit=0)


def test_a_watcher_never_sees_a_later_id_before_an_earlier_one(db_factory: sessionmaker[Session]) -> None:
    """An event whose transaction is still open must not let a later event be seen first: a watcher
    resuming after the later id would skip the earlier one for ever."""
    earlier = db_factory()
    later_done = threading.Event()

    def write_later() -> None:
        with session_scope(db_factory) as session:
            record_event(session, kind="test", message="later")
        later_done.set()

    try:
        record_event(earlier, kind="test", message="earlier")
        writer = threading.Thread(target=write_later)
        writer.start()
        later_done.wait(timeout=0.5)
        with session_scope(db_factory) as watcher:
            assert [e.message for e in list_events(watcher)] == []
        earlier.commit()
    finally:
        earlier.close()
    writer.join(timeout=20)
    assert later_done.is_set()
    with session_scope(db_factory) as watcher:
        assert [e.message for e in list_events(watcher)] == ["earlier", "later"]
