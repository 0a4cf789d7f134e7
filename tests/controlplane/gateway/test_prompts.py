"""The prompt audit of real requests: two tenants with two system prompts through a real gateway to real
replicas; the audit's tokens by tenant, system prompts, repeated prefixes and savings are exactly what the
replicas' token counts and the gateway's chunking make of them, and no prompt text lands in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from llmctl.controlplane.db.models import Base, TrafficSample, UsageRecord
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.traffic import CHUNK_CHARS, prompt_of, system_prompt
from llmctl.controlplane.services import prompts

sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SYSTEM_A = " ".join(["You are the paged attention handbook's careful assistant; answer in one line."] * 6)
SYSTEM_B = " ".join(["Translate the user's words into plain French, nothing else."] * 3)
# (tenant, system prompt or None for a plain completion, the user's words); sent in this order.
SENT = [
    ("acme", SYSTEM_A, "What is a block?"),
    ("acme", SYSTEM_A, "Why page the cache?"),
    ("beta", SYSTEM_B, "Good morning."),
    ("beta", SYSTEM_A, "How large is a page?"),
    ("beta", SYSTEM_B, "Thank you."),
    ("acme", None, "Once upon a time"),
]


def send(gateway, key: str, system: str | None, words: str) -> int:
    """One request; returns the prompt tokens the replica reported."""
    if system is None:
        path, body = "/v1/completions", {"prompt": words}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "system", "content": system},
                                                           {"role": "user", "content": words}]}
    r = httpx.post(gateway.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "tiny", "max_tokens": 2, "temperature": 0, "ignore_eos": True, **body})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def rendered(system: str | None, words: str) -> tuple[str, str]:
    """The rendered prompt and its system part, as the gateway renders a chat (role, newline, content, newline)."""
    if system is None:
        return words, ""
    return f"system\n{system}\nuser\n{words}\n", f"system\n{system}\n"


def common_chunks(a: str, b: str) -> int:
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same // CHUNK_CHARS


@sqlite
def test_the_audit_of_real_requests_has_the_expected_numbers_and_no_text(gateway, make_tenant, db_factory):
    keys = {"acme": make_tenant("acme"), "beta": make_tenant("beta")}
    since = datetime.now(UTC) - timedelta(seconds=1)
    tokens = [send(gateway, keys[tenant], system, words) for tenant, system, words in SENT]
    for key in keys.values():
        assert httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with session_scope(db_factory) as session:
        found = prompts.audit(session, name="tiny", since=since, top=5)
        costs = list(session.scalars(select(UsageRecord.cost_usd)))

    # What each request should have left, worked out here from the texts and the replica's counts.
    texts = [rendered(system, words) for _, system, words in SENT]
    system_tokens = [round(n * len(part) / len(text)) for n, (text, part) in zip(tokens, texts, strict=True)]
    shared_chunks = [max((common_chunks(text, earlier) for earlier, _ in texts[:i]), default=0)
                     for i, (text, _) in enumerate(texts)]
    shared = [round(n * c * CHUNK_CHARS / len(text)) for n, c, (text, _) in zip(tokens, shared_chunks, texts,
                                                                                 strict=True)]
    assert [c > 0 for c in shared_chunks] == [False, True, False, True, True, False]

    assert found["requests"] == 6 and found["prompt_tokens"] == sum(tokens)
    by_tenant = {t: sum(n for (name, _, _), n in zip(SENT, tokens, strict=True) if name == t) for t in keys}
    assert [(t["tenant"], t["requests"], t["prompt_tokens"], t["completion_tokens"]) for t in found["tenants"]] == \
        sorted(((t, 3, by_tenant[t], 6) for t in keys), key=lambda row: -row[2])
    assert sum(t["prompt_share"] for t in found["tenants"]) == pytest.approx(1.0)

    # System prompt A in 3 of 6 requests (both tenants), B in 2; the plain completion has none.
    a, b = [i for i, s in enumerate(SENT) if s[1] == SYSTEM_A], [i for i, s in enumerate(SENT) if s[1] == SYSTEM_B]
    assert [(p["requests"], p["share"], p["tokens"]) for p in found["system_prompts"]] == pytest.approx([
        (3, 0.5, sum(system_tokens[i] for i in a) / 3), (2, 2 / 6, sum(system_tokens[i] for i in b) / 2)])
    assert found["system_prompt_requests"] == 5 and found["mean_system_tokens"] == pytest.approx(sum(system_tokens) / 6)
    target = round(sum(system_tokens) / 5 / 2)
    assert found["target_system_tokens"] == target
    cut = sum(max(0, t - target) for t in system_tokens) / 6
    price = sum(costs) / (sum(tokens) + 2 * 6) * 1e6
    assert found["usd_per_mtok"] == pytest.approx(price) and price > 0
    assert found["shorter_system_prompt"] == pytest.approx({"tokens_per_million": cut * 1e6,
                                                            "usd_per_million": cut * price})

    # Repeated prefixes: A's reused by two requests (one of each tenant), B's by one.
    assert [(p["requests"], p["saved_tokens"]) for p in found["prefixes"]] == [
        (2, shared[1] + shared[3]), (1, shared[4])]
    assert found["prefix_saved_tokens"] == sum(shared)
    assert found["prefix_cache"] == pytest.approx({"tokens_per_million": sum(shared) / 6 * 1e6,
                                                   "usd_per_million": sum(shared) / 6 * price})

    # Nothing of any prompt is kept in any table: only numbers, names and keyed hashes (quality sampling, off
    # here, is what keeps the prompts it samples).
    words = [w for _, _, w in SENT] + [SYSTEM_A[:24], SYSTEM_B[:24], "French", "paged attention"]
    with session_scope(db_factory) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                text = " ".join(str(v) for v in row)
                assert not any(w in text for w in words), (table.name, text)
        hashes = set(session.scalars(select(TrafficSample.system_prompt_hash)))
    assert hashes == {p["hash"] for p in found["system_prompts"]} | {None}


def test_the_system_prompt_is_the_system_and_developer_messages():
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                         {"role": "developer", "content": [{"type": "text", "text": "No lists."}]}]}
    prompt = prompt_of("chat", body)
    assert prompt == "system\nBe brief.\nuser\nHi there\ndeveloper\nNo lists.\n"
    assert prompt.system == "system\nBe brief.\ndeveloper\nNo lists.\n"
    # 37 of the 51 rendered characters: 37/51 of 20 prompt tokens.
    digest, tokens = system_prompt(prompt, 20)
    assert len(prompt) == 51 and tokens == round(20 * 37 / 51) == 15 and len(digest) == 16
    same = system_prompt(prompt_of("chat", {**body, "messages": [*body["messages"][:1], body["messages"][2]]}), 9)
    assert same.digest == digest  # the user's words are not part of it
    assert system_prompt(prompt_of("chat", {"messages": [{"role": "user", "content": "Hi"}]}), 5) == (None, 0)
    assert system_prompt(prompt_of("completion", {"prompt": "system\nBe brief.\n"}), 5) == (None, 0)
    assert system_prompt(prompt_of("completion", {"prompt": [1, 2, 3]}), 3) == (None, 0)
