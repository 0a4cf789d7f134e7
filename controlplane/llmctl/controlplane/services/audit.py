"""The audit log of admin actions: one row per AdminService call that changes something (rpc/audit.py).

Events tell what the control plane did and why; audit rows tell who asked for what, from where, and whether
it was allowed and worked, refused and failed calls included.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import AuditRecord, utcnow
from llmctl.controlplane.services import check_aware, check_count

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_MESSAGE = 2000
"""Longer error messages are cut: the row records why a call failed, not every byte of it."""


def record_audit(session: Session, *, actor: str, peer: str, rpc: str, target: str, result: str,
                 message: str = "", at: datetime | None = None) -> AuditRecord:
    record = AuditRecord(at=check_aware("at", at) or utcnow(), actor=_clean(actor, 64), peer=_clean(peer, 128),
                         rpc=_clean(rpc, 64), target=_clean(target, 255), result=_clean(result, 32),
                         message=_clean(message, MAX_MESSAGE))
    session.add(record)
    session.flush()
    return record


def list_audit(session: Session, *, since: datetime | None = None, limit: int = DEFAULT_LIMIT) -> list[AuditRecord]:
    """The newest `limit` rows at or after `since`, newest first."""
    check_aware("since", since)
    check_count("limit", limit, 1, MAX_LIMIT)
    query = select(AuditRecord)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    return list(session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit)))


def _clean(value: str, length: int) -> str:
    # Targets and messages quote what callers sent; PostgreSQL text cannot hold NUL, so it is spelled out.
    return value.replace("\x00", "\\x00")[:length]
