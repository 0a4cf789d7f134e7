"""The prompt audit's arithmetic in SQL on SQLite and PostgreSQL: prompt tokens by tenant, system prompts and
repeated prefixes by hash, savings per million requests at the recorded or a given price, and refusals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import TrafficSample, utcnow
from llmctl.controlplane.db.session import session_factory, session_scope
from llmctl.controlplane.errors import InvalidArgument, NotFound
from llmctl.controlplane.services import deployments, prompts, tenants, traffic

A, B = b"A" * 16, b"B" * 16  # two system prompts' digests, as the gateway hands them over
P1, P2, P3 = b"prefix-1", b"prefix-2", b"prefix-3"
# tenant, prompt tokens, shared prefix tokens, prefix key, system prompt tokens, system digest, cost in dollars
REQUESTS = [
    ("acme", 500, 0, None, 400, A, 0.001),
    ("acme", 520, 384, P1, 400, A, 0.001),
    ("acme", 510, 384, P1, 400, A, 0.001),
    ("beta", 300, 0, None, 200, B, 0.0005),
    ("beta", 310, 192, P2, 200, B, 0.0005),
    ("beta", 100, 0, None, 0, None, 0.0005),  # a prompt without a system prompt
    ("acme", 540, 448, P3, 400, A, 0.001),  # the same system prompt and a repeated first question
    ("beta", 200, 64, None, 0, None, 0.0005),  # recorded before prefixes had hashes: counted in totals only
]
OUTPUT = 10


def record_all(session: Session, name: str = "chat", ago_s: float = 60.0) -> None:
    ids = {t.name: t.id for t in tenants.list_tenants(session)}
    at = utcnow() - timedelta(seconds=ago_s)
    for i, (tenant, prompt, shared, key, system, digest, cost) in enumerate(REQUESTS):
        when = at + timedelta(seconds=i)
        traffic.record(session, deployment_name=name, arrived_at=when, prompt_tokens=prompt,
                       completion_tokens=OUTPUT, shared_prefix_tokens=shared, shared_prefix_key=key,
                       system_prompt_tokens=system, system_prompt_digest=digest)
        tenants.record_usage(session, tenant_id=ids[tenant], deployment_name=name, prompt_tokens=prompt,
                             completion_tokens=OUTPUT, cost_usd=cost, at=when)


@pytest.fixture
def recorded(db_factory: sessionmaker[Session]) -> sessionmaker[Session]:
    with session_scope(db_factory) as session:
        deployments.deploy(session, name="chat", model="tiny", engine_config={})
        deployments.deploy(session, name="quiet", model="tiny", engine_config={})
        tenants.create_tenant(session, name="acme")
        tenants.create_tenant(session, name="beta")
        record_all(session)
        record_all(session, "other")  # another deployment's traffic is not this one's
        record_all(session, ago_s=3 * 3600)  # nor is traffic older than the window
    return db_factory


def audit(factory: sessionmaker[Session], **kwargs) -> dict:
    with session_scope(factory) as session:
        return prompts.audit(session, name=kwargs.pop("name", "chat"), since=utcnow() - timedelta(hours=1), **kwargs)


def test_the_audit_counts_tenants_system_prompts_and_prefixes(recorded: sessionmaker[Session]) -> None:
    found = audit(recorded, top=2)
    total = sum(r[1] for r in REQUESTS)
    assert found["requests"] == 8 and found["prompt_tokens"] == total == 2980
    assert [(t["tenant"], t["requests"], t["prompt_tokens"], t["completion_tokens"]) for t in found["tenants"]] == [
        ("acme", 4, 2070, 40), ("beta", 4, 910, 40)]
    assert [t["prompt_share"] for t in found["tenants"]] == pytest.approx([2070 / 2980, 910 / 2980])
    assert [t["cost_usd"] for t in found["tenants"]] == pytest.approx([0.004, 0.002])

    # System prompts by request count: A in half the requests at 400 tokens, B in a quarter at 200.
    with session_scope(recorded) as session:
        hashes = {r.system_prompt_tokens: r.system_prompt_hash for r in session.scalars(
            select(TrafficSample).where(TrafficSample.deployment_name == "chat"))}
    assert [(p["hash"], p["requests"], p["share"], p["tokens"]) for p in found["system_prompts"]] == [
        (hashes[400], 4, 0.5, 400.0), (hashes[200], 2, 0.25, 200.0)]
    assert found["distinct_system_prompts"] == 2 and found["system_prompt_requests"] == 6
    assert found["mean_system_tokens"] == 2000 / 8
    # Half the mean system prompt (333.3 tokens) is 167: A saves 233 a request, B 33, the rest nothing.
    assert found["target_system_tokens"] == 167
    assert found["shorter_system_prompt"]["tokens_per_million"] == pytest.approx((4 * 233 + 2 * 33) / 8 * 1e6)

    # Prefixes by saved tokens (requests x shared tokens), the top 2 of 3.
    assert [(p["requests"], p["tokens"], p["saved_tokens"], p["share"]) for p in found["prefixes"]] == [
        (2, 384.0, 768, 0.25), (1, 448.0, 448, 0.125)]
    assert found["distinct_prefixes"] == 3 and len({p["hash"] for p in found["prefixes"]}) == 2
    assert found["prefix_saved_tokens"] == 1472 and found["prefix_saved_fraction"] == pytest.approx(1472 / 2980)
    assert found["prefix_cache"]["tokens_per_million"] == pytest.approx(1472 / 8 * 1e6)

    # Dollars at the window's recorded cost per token: $0.006 for 2980 prompt + 80 output tokens.
    price = 0.006 / 3060 * 1e6
    assert found["price_source"] == "recorded" and found["usd_per_mtok"] == pytest.approx(price)
    assert found["shorter_system_prompt"]["usd_per_million"] == pytest.approx(998 / 8 * price)
    assert found["prefix_cache"]["usd_per_million"] == pytest.approx(184 * price)


def test_a_target_and_a_price_given_are_used(recorded: sessionmaker[Session]) -> None:
    found = audit(recorded, target_system_tokens=300, usd_per_mtok=2.0)
    # Only A (400 tokens, 4 requests) is longer than 300.
    assert found["target_system_tokens"] == 300
    assert found["shorter_system_prompt"] == pytest.approx({"tokens_per_million": 4 * 100 / 8 * 1e6,
                                                            "usd_per_million": 4 * 100 / 8 * 2.0})
    assert found["price_source"] == "given" and found["usd_per_mtok"] == 2.0
    assert found["prefix_cache"]["usd_per_million"] == pytest.approx(184 * 2.0)
    assert len(found["prefixes"]) == 3 and len(found["system_prompts"]) == 2  # the default top is 5


def test_stored_hashes_need_the_control_planes_secret(recorded: sessionmaker[Session]) -> None:
    """A copy of the database alone cannot tell which system prompt a hash stands for: the same digest stored
    under another secret gives another hash."""
    engine = recorded.kw["bind"]
    with session_scope(session_factory(engine, api_key_secret="another-secret")) as session:
        row = traffic.record(session, deployment_name="elsewhere", arrived_at=utcnow(), prompt_tokens=500,
                             completion_tokens=1, shared_prefix_tokens=0, system_prompt_tokens=400,
                             system_prompt_digest=A)
        other = row.system_prompt_hash
    found = audit(recorded)
    assert len(other) == 16 and other not in {p["hash"] for p in found["system_prompts"]}


def test_unknown_deployments_empty_windows_and_bad_arguments_are_refused(recorded: sessionmaker[Session]) -> None:
    with pytest.raises(NotFound, match="deployment 'nope' not found"):
        audit(recorded, name="nope")
    with pytest.raises(NotFound, match="deployment quiet has no recorded traffic between .* widen --window"):
        audit(recorded, name="quiet")
    for kwargs, message in (({"top": 0}, "top must be an integer between 1 and 100"),
                            ({"target_system_tokens": -1}, "target_system_tokens must be an integer >= 0"),
                            ({"usd_per_mtok": -1.0}, "price per million prompt tokens must be a number >= 0")):
        with pytest.raises(InvalidArgument, match=message):
            audit(recorded, **kwargs)


def test_a_window_without_cost_has_no_dollars(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        traffic.record(session, deployment_name="chat", arrived_at=utcnow(), prompt_tokens=50, completion_tokens=5,
                       shared_prefix_tokens=0, system_prompt_tokens=20, system_prompt_digest=A)
    found = audit(db_factory)
    assert found["tenants"] == [] and found["usd_per_mtok"] is None and found["price_source"] is None
    assert found["shorter_system_prompt"] == {"tokens_per_million": 10 * 1e6, "usd_per_million": None}
