"""The audit log: every change the control plane makes is recorded here, in order."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import Event
from llmctl.controlplane.errors import InvalidArgument

MAX_LIMIT = 1000
# Arbitrary constant naming "the event log" among PostgreSQL advisory locks.
_EVENT_LOCK_KEY = 0x6C6C6D63


def record_event(
    session: Session,
    *,
    kind: str,
    message: str,
    deployment_name: str | None = None,
    node_name: str | None = None,
    actor: str = "system",
    details: dict[str, Any] | None = None,
) -> Event:
    if session.get_bind().dialect.name == "postgresql":
        # Watchers resume from the last id they saw, so ids must become visible in order. Sequences hand
        # out ids before commit; holding this lock to commit makes event-writing transactions commit in
        # id order. (SQLite has a single writer already.)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENT_LOCK_KEY})
    event = Event(
        kind=kind,
        message=message,
        deployment_name=deployment_name,
        node_name=node_name,
        actor=actor,
        details=details or {},
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    *,
    after_id: int = 0,
    deployment_name: str | None = None,
    kinds: Collection[str] | None = None,
    limit: int = 200,
    newest: bool = False,
) -> list[Event]:
    """Events with id > after_id, oldest first; pass the last id seen to resume a watch.

    newest: the last `limit` of them instead of the first (still oldest first), without paging the log."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if after_id < 0:
        raise InvalidArgument(f"after_id must be >= 0, got {after_id}")
    query = select(Event).where(Event.id > after_id)
    if deployment_name is not None:
        query = query.where(Event.deployment_name == deployment_name)
    if kinds is not None:
        query = query.where(Event.kind.in_(list(kinds)))
    if newest:
        return list(reversed(session.scalars(query.order_by(Event.id.desc()).limit(limit)).all()))
    return list(session.scalars(query.order_by(Event.id).limit(limit)))
