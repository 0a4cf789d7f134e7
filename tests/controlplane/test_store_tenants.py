"""Tenants, API keys and usage on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import ApiKey
from llmctl.controlplane.db.session import make_engine, session_factory, session_scope, upgrade_database
from llmctl.controlplane.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.tenants import (
    authenticate,
    create_api_key,
    create_tenant,
    get_tenant,
    list_tenants,
    record_usage,
    revoke_api_key,
    tokens_used_in_month,
    usage_summary,
)
from tests.controlplane.conftest import TEST_API_KEY_SECRET


def every_stored_value(session: Session) -> str:
    """Every table's rows, as one string, to search for secrets."""
    bind = session.get_bind()
    dump = []
    for table in inspect(bind).get_table_names():
        dump.extend(str(row) for row in session.execute(text(f'SELECT * FROM "{table}"')))
    return "\n".join(dump)


def test_key_is_shown_once_and_stored_only_as_its_hash(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        tenant, key = create_tenant(session, name="acme", rpm=60, tpm=10_000, monthly_tokens=1_000_000)
    assert key.startswith("llmctl-") and len(key) > 40
    with session_scope(db_factory) as session:
        dump = every_stored_value(session)
        assert key not in dump and key[12:] not in dump
        row = session.scalars(select(ApiKey)).one()
        assert row.prefix == key[:12] and row.scheme == "hmac-sha256"
        assert row.key_hash == hmac.new(TEST_API_KEY_SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()
        assert authenticate(session, key).name == "acme"
        stored = get_tenant(session, "acme")
        assert (stored.rpm, stored.tpm, stored.monthly_tokens) == (60, 10_000, 1_000_000)
        assert [e.kind for e in list_events(session)] == ["tenant.created", "api_key.created"]


BEFORE_HMAC = "a41c7e9b2d10"
"""The last schema revision whose API keys were plain sha256."""


def test_a_sha256_key_from_before_hmac_keeps_working_and_is_rehashed_on_first_use(blank_db_url: str) -> None:
    upgrade_database(blank_db_url, BEFORE_HMAC)
    key = "llmctl-" + "legacy0123456789abcdefghijklmnopqrstuvwxyzAB"
    engine = make_engine(blank_db_url)
    try:
        with engine.begin() as connection:  # the row exactly as the older control plane wrote it
            connection.execute(text("INSERT INTO tenants (id, name, rpm, tpm, monthly_tokens, quality_opt_out, "
                                    "created_at) VALUES (1, 'old', 0, 0, 0, false, CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO api_keys (tenant_id, prefix, key_hash, created_at) "
                                    "VALUES (1, :prefix, :hash, CURRENT_TIMESTAMP)"),
                               {"prefix": key[:12], "hash": hashlib.sha256(key.encode()).hexdigest()})
        upgrade_database(blank_db_url)
        db = session_factory(engine, api_key_secret=TEST_API_KEY_SECRET)
        with session_scope(db) as session:
            assert session.scalars(select(ApiKey.scheme)).one() == "sha256"
            with pytest.raises(Unauthenticated):  # same prefix, wrong rest: refused before any rehash
                authenticate(session, key[:12] + "x" * 30)
            assert session.scalars(select(ApiKey.scheme)).one() == "sha256"
        with session_scope(db) as session:
            assert authenticate(session, key).name == "old"
        with session_scope(db) as session:
            row = session.scalars(select(ApiKey)).one()
            assert row.scheme == "hmac-sha256"
            assert row.key_hash == hmac.new(TEST_API_KEY_SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()
            assert authenticate(session, key).name == "old"  # and keeps working as HMAC
    finally:
        engine.dispose()


def test_keys_only_authenticate_with_the_secret_they_were_hashed_with(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with session_scope(session_factory(engine, api_key_secret="the-real-secret")) as session:
            _, key = create_tenant(session, name="acme")
        with (session_scope(session_factory(engine, api_key_secret="another-secret")) as session,
              pytest.raises(Unauthenticated)):
            authenticate(session, key)
        with session_scope(session_factory(engine, api_key_secret="the-real-secret")) as session:
            assert authenticate(session, key).name == "acme"
    finally:
        engine.dispose()


def test_wrong_missing_and_revoked_keys_are_unauthenticated(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        _, first = create_tenant(session, name="acme")
        second = create_api_key(session, tenant_name="acme")
    forged = first[:12] + "x" * (len(first) - 12)
    for bad in ("", "llmctl-", forged, first + "x", "sk-" + first[3:]):
        with session_scope(db_factory) as session, pytest.raises(Unauthenticated, match="invalid API key"):
            authenticate(session, bad)
    with session_scope(db_factory) as session:
        revoke_api_key(session, prefix=first[:12])
    with session_scope(db_factory) as session:
        with pytest.raises(Unauthenticated):
            authenticate(session, first)
        assert authenticate(session, second).name == "acme"  # other keys keep working
        with pytest.raises(NotFound, match="no API key starts with"):
            revoke_api_key(session, prefix="llmctl-nope0")


def test_tenant_names_and_limits_are_checked(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        create_tenant(session, name="acme")
    with (
        session_scope(db_factory) as session,
        pytest.raises(AlreadyExists, match="tenant 'acme' already exists"),
    ):
        create_tenant(session, name="acme")
    with session_scope(db_factory) as session:
        with pytest.raises(InvalidArgument, match="rpm must be an integer >= 0"):
            create_tenant(session, name="beta", rpm=-1)
        with pytest.raises(InvalidArgument, match="invalid tenant name"):
            create_tenant(session, name="Beta Corp")
        with pytest.raises(NotFound, match="tenant 'ghost' not found"):
            create_api_key(session, tenant_name="ghost")
        assert [t.name for t in list_tenants(session)] == ["acme"]


def test_usage_is_per_tenant(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        a, _ = create_tenant(session, name="tenant-a")
        b, _ = create_tenant(session, name="tenant-b")
        record_usage(
            session,
            tenant_id=a.id,
            deployment_name="chat",
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.01,
        )
        record_usage(
            session,
            tenant_id=a.id,
            deployment_name="chat",
            prompt_tokens=20,
            completion_tokens=5,
            cost_usd=0.02,
        )
        record_usage(
            session, tenant_id=a.id, deployment_name="code", prompt_tokens=1, completion_tokens=1, cost_usd=0
        )
        record_usage(
            session,
            tenant_id=b.id,
            deployment_name="chat",
            prompt_tokens=100,
            completion_tokens=50,
            cost_usd=1.5,
        )
    with session_scope(db_factory) as session:
        assert usage_summary(session, tenant_id=a.id) == [
            {
                "deployment_name": "chat",
                "requests": 2,
                "prompt_tokens": 30,
                "completion_tokens": 10,
                "cost_usd": pytest.approx(0.03),
            },
            {
                "deployment_name": "code",
                "requests": 1,
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "cost_usd": 0.0,
            },
        ]
        assert usage_summary(session, tenant_id=b.id) == [
            {
                "deployment_name": "chat",
                "requests": 1,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "cost_usd": pytest.approx(1.5),
            },
        ]
        assert tokens_used_in_month(session, tenant_id=a.id) == 42
        assert tokens_used_in_month(session, tenant_id=b.id) == 150


def test_month_boundaries_are_calendar_months_in_utc(db_factory: sessionmaker[Session]) -> None:
    last_instant_of_january = datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
    first_instant_of_february = datetime(2026, 2, 1, tzinfo=UTC)
    # 2026-02-01 01:00 in UTC+02:00 is still 31 January in UTC.
    january_elsewhere = datetime(2026, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(db_factory) as session:
        tenant, _ = create_tenant(session, name="acme")
        for at, tokens in (
            (datetime(2025, 12, 31, 23, 0, tzinfo=UTC), 1),
            (last_instant_of_january, 10),
            (january_elsewhere, 100),
            (first_instant_of_february, 1000),
            (datetime(2026, 3, 1, tzinfo=UTC), 10000),
        ):
            record_usage(
                session,
                tenant_id=tenant.id,
                deployment_name="chat",
                prompt_tokens=tokens,
                completion_tokens=0,
                cost_usd=0,
                at=at,
            )
    with session_scope(db_factory) as session:
        assert (
            tokens_used_in_month(session, tenant_id=tenant.id, now=datetime(2026, 1, 15, tzinfo=UTC)) == 110
        )
        assert tokens_used_in_month(session, tenant_id=tenant.id, now=first_instant_of_february) == 1000
        assert tokens_used_in_month(session, tenant_id=tenant.id, now=datetime(2025, 12, 1, tzinfo=UTC)) == 1
        [window] = usage_summary(
            session,
            tenant_id=tenant.id,
            since=last_instant_of_january,
            until=datetime(2026, 3, 1, tzinfo=UTC),
        )
        assert window["prompt_tokens"] == 1010 and window["requests"] == 2  # 23:00 UTC is before since
        with pytest.raises(InvalidArgument, match="timezone-aware"):
            tokens_used_in_month(session, tenant_id=tenant.id, now=datetime(2026, 1, 15))
        with pytest.raises(InvalidArgument, match="cost_usd must be a number >= 0"):
            record_usage(
                session,
                tenant_id=tenant.id,
                deployment_name="chat",
                prompt_tokens=1,
                completion_tokens=1,
                cost_usd=-1,
            )
