"""Tenants, their API keys (stored hashed) and their token usage."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmctl.controlplane.db.models import ApiKey, QualitySample, Tenant, UsageRecord, utcnow
from llmctl.controlplane.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from llmctl.controlplane.services import check_aware, check_count, check_name
from llmctl.controlplane.services.events import record_event

logger = logging.getLogger("llmctl.controlplane.tenants")

KEY_PREFIX = "llmctl-"
PREFIX_LENGTH = 12
"""Stored in clear to find a key's row and to name it in listings; the rest is only ever hashed."""
HMAC_SCHEME = "hmac-sha256"
"""HMAC-SHA256 keyed with the control plane's secret: a stolen database alone cannot test guesses."""
LEGACY_SCHEME = "sha256"
"""Keys stored before the secret existed; rehashed with HMAC the first time they authenticate."""
SECRET_INFO_KEY = "api_key_secret"
"""Where the secret travels: the session factory's info (db.session.session_factory(api_key_secret=...))."""


def create_tenant(
    session: Session, *, name: str, rpm: int = 0, tpm: int = 0, monthly_tokens: int = 0,
    quality_opt_out: bool = False,
) -> tuple[Tenant, str]:
    """A new tenant and its first API key. The key is returned this once; only its HMAC is kept."""
    check_name("tenant", name)
    for what, value in (("rpm", rpm), ("tpm", tpm), ("monthly_tokens", monthly_tokens)):
        check_count(what, value, 0)
    if session.scalars(select(Tenant.id).where(Tenant.name == name)).first() is not None:
        raise AlreadyExists(f"tenant {name!r} already exists")
    tenant = Tenant(name=name, rpm=rpm, tpm=tpm, monthly_tokens=monthly_tokens, quality_opt_out=quality_opt_out,
                    created_at=utcnow())
    session.add(tenant)
    try:
        session.flush()
    except IntegrityError as e:
        raise AlreadyExists(f"tenant {name!r} already exists") from e
    record_event(
        session,
        kind="tenant.created",
        message=f"created tenant {name} (rpm {rpm or 'unlimited'}, tpm {tpm or 'unlimited'}, "
        f"monthly tokens {monthly_tokens or 'unlimited'}"
        + (", opted out of quality sampling)" if quality_opt_out else ")"),
        details={"tenant": name, "rpm": rpm, "tpm": tpm, "monthly_tokens": monthly_tokens,
                 "quality_opt_out": quality_opt_out},
    )
    return tenant, _new_key(session, tenant)


def set_quality_opt_out(session: Session, *, name: str, opt_out: bool, actor: str = "admin") -> Tenant:
    """Whether the tenant's requests may be stored as quality samples; opting out deletes those stored."""
    tenant = get_tenant(session, name)
    if tenant.quality_opt_out == opt_out:
        return tenant
    tenant.quality_opt_out = opt_out
    deleted = 0
    if opt_out:
        deleted = session.execute(delete(QualitySample).where(QualitySample.tenant_id == tenant.id)).rowcount or 0
    session.flush()
    record_event(session, kind="tenant.quality_opt_out", actor=actor,
                 message=f"tenant {name} " + (f"opted out of quality sampling ({deleted} stored sample(s) deleted)"
                                              if opt_out else "opted back in to quality sampling"),
                 details={"tenant": name, "opt_out": opt_out, "deleted_samples": deleted})
    return tenant


def set_cache_sampled(session: Session, *, name: str, cache_sampled: bool, actor: str = "admin") -> Tenant:
    """Whether the gateway's exact cache may answer the tenant's sampled requests (by default only
    deterministic ones: temperature 0, top_k 1 or a seed). Takes effect at the tenant's next request."""
    tenant = get_tenant(session, name)
    if tenant.cache_sampled == cache_sampled:
        return tenant
    tenant.cache_sampled = cache_sampled
    session.flush()
    record_event(session, kind="tenant.cache_sampled", actor=actor,
                 message=f"tenant {name}: the response cache " + ("may now answer" if cache_sampled else
                                                                 "no longer answers") + " sampled requests",
                 details={"tenant": name, "cache_sampled": cache_sampled})
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> str:
    """Another key for an existing tenant (e.g. to rotate); returned once, stored hashed."""
    return _new_key(session, get_tenant(session, tenant_name))


def _new_key(session: Session, tenant: Tenant) -> str:
    while True:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = key[:PREFIX_LENGTH]
        # Prefixes carry 30 random bits, so a repeat is rare; it would make lookups ambiguous, so redraw.
        if session.scalars(select(ApiKey.id).where(ApiKey.prefix == prefix)).first() is None:
            break
    session.add(ApiKey(tenant=tenant, prefix=prefix, key_hash=_hmac(key, api_key_secret(session)), scheme=HMAC_SCHEME,
                       created_at=utcnow()))
    session.flush()
    record_event(
        session,
        kind="api_key.created",
        message=f"created API key {prefix}... for tenant {tenant.name}",
        details={"tenant": tenant.name, "prefix": prefix},
    )
    return key


def revoke_api_key(session: Session, *, prefix: str) -> None:
    """Revoke the key whose first 12 characters are `prefix`; it stops authenticating at once."""
    api_key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if api_key is None:
        raise NotFound(
            f"no API key starts with {prefix!r}; give the first {PREFIX_LENGTH} characters of the key"
        )
    if api_key.revoked_at is not None:
        return
    api_key.revoked_at = utcnow()
    session.flush()
    record_event(
        session,
        kind="api_key.revoked",
        message=f"revoked API key {prefix}... of tenant {api_key.tenant.name}",
        details={"tenant": api_key.tenant.name, "prefix": prefix},
    )


def authenticate(session: Session, api_key: str) -> Tenant:
    """The tenant owning this key; Unauthenticated for a missing, unknown or revoked key.

    A legacy (sha256) row that matches is rehashed with HMAC in the caller's transaction."""
    invalid = Unauthenticated("invalid API key")
    if not isinstance(api_key, str) or len(api_key) <= PREFIX_LENGTH:
        raise invalid
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == api_key[:PREFIX_LENGTH])).one_or_none()
    secret = api_key_secret(session)
    if row is None:
        _hmac(api_key, secret)  # the same work as for a known prefix, so timing does not tell them apart
        raise invalid
    if row.scheme == HMAC_SCHEME:
        offered = _hmac(api_key, secret)
    elif row.scheme == LEGACY_SCHEME:
        offered = hashlib.sha256(api_key.encode()).hexdigest()
    else:
        logger.warning("API key %s... has unknown hash scheme %r; refusing it", row.prefix, row.scheme)
        raise invalid
    # Constant-time comparison, so response timing does not reveal how much of a guessed hash matched.
    if not hmac.compare_digest(row.key_hash, offered) or row.revoked_at is not None:
        raise invalid
    if row.scheme != HMAC_SCHEME:
        row.key_hash, row.scheme = _hmac(api_key, secret), HMAC_SCHEME
        session.flush()
        logger.info("rehashed API key %s... with HMAC-SHA256", row.prefix)
    return row.tenant


def api_key_secret(session: Session) -> bytes:
    """The server secret API keys (and the traffic rows' prompt hashes) are HMAC'd with, from the session factory."""
    secret = session.info.get(SECRET_INFO_KEY)
    assert secret, "no API key secret in this session factory: session_factory(engine, api_key_secret=...)"
    return secret.encode() if isinstance(secret, str) else secret


def _hmac(key: str, secret: bytes) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def record_usage(
    session: Session,
    *,
    tenant_id: int,
    deployment_name: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float,
    at: datetime | None = None,
) -> UsageRecord:
    """One gateway request's tokens and cost. Not an Event: usage has its own, much larger, table."""
    check_count("prompt_tokens", prompt_tokens, 0)
    check_count("completion_tokens", completion_tokens, 0)
    if isinstance(cost_usd, bool) or not isinstance(cost_usd, int | float) or cost_usd < 0:
        raise InvalidArgument(f"cost_usd must be a number >= 0, got {cost_usd!r}")
    check_aware("at", at)
    record = UsageRecord(
        tenant_id=tenant_id,
        deployment_name=deployment_name,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=float(cost_usd),
        at=at or utcnow(),
    )
    session.add(record)
    session.flush()
    return record


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first day of `now`'s calendar month (UTC)."""
    now = now.astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def tokens_used_in_month(session: Session, *, tenant_id: int, now: datetime | None = None) -> int:
    """Prompt plus completion tokens in the calendar month (UTC) containing `now`."""
    now = check_aware("now", now) or utcnow()
    total = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0)).where(
            UsageRecord.tenant_id == tenant_id,
            UsageRecord.at >= month_start(now),
            UsageRecord.at < next_month_start(now),
        )
    )
    return int(total or 0)


def usage_summary(
    session: Session, *, tenant_id: int, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Per deployment (sorted by name): requests, prompt_tokens, completion_tokens, cost_usd in [since, until)."""
    check_aware("since", since)
    check_aware("until", until)
    query = select(
        UsageRecord.deployment_name,
        func.count(UsageRecord.id),
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.sum(UsageRecord.cost_usd),
    ).where(UsageRecord.tenant_id == tenant_id)
    if since is not None:
        query = query.where(UsageRecord.at >= since)
    if until is not None:
        query = query.where(UsageRecord.at < until)
    rows = session.execute(query.group_by(UsageRecord.deployment_name).order_by(UsageRecord.deployment_name))
    return [
        {
            "deployment_name": name,
            "requests": int(requests),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "cost_usd": float(cost),
        }
        for name, requests, prompt, completion, cost in rows
    ]


def get_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        raise NotFound(f"tenant {name!r} not found; create the tenant first")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))
