"""Recorded traffic: every answered request through a real gateway to a real replica leaves a row with its
arrival time, the replica's token counts and an estimate of its shared prefix, never its content; and the
prefix tracker behind that estimate, on its own."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import openai
import pytest
from sqlalchemy import select

from llmctl.controlplane.db.models import TrafficSample, UsageRecord
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.traffic import CHUNK_CHARS, CHUNK_IDS, PrefixTracker, prompt_of

sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SYSTEM = " ".join(["You are a careful assistant for the paged attention handbook; answer briefly."] * 6)


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def rows(db_factory, model=TrafficSample) -> list:
    with session_scope(db_factory) as session:
        found = list(session.scalars(select(model).order_by(model.id)))
        session.expunge_all()
        return found


def settle(gateway, key: str) -> None:
    """/v1/usage waits for the caller's pending usage rows, and each traffic row is written with its usage row."""
    assert httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200


@sqlite
def test_answered_requests_leave_their_shape_with_the_replicas_token_counts(gateway, make_tenant, db_factory):
    key = make_tenant("acme")
    oai = client(gateway, key)
    before = datetime.now(UTC)
    answers = [
        oai.chat.completions.create(model="tiny", max_tokens=5, temperature=0, extra_body={"ignore_eos": True},
                                    messages=[{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": question}])
        for question in ("What is a block?", "Why page the cache?")
    ]
    stream = oai.completions.create(model="tiny", prompt=SYSTEM + " Go on.", max_tokens=3, temperature=0,
                                    stream=True, stream_options={"include_usage": True},
                                    extra_body={"ignore_eos": True})
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None]
    settle(gateway, key)
    after = datetime.now(UTC)

    recorded = rows(db_factory)
    assert [r.deployment_name for r in recorded] == ["tiny"] * 3
    usages = [(a.usage.prompt_tokens, a.usage.completion_tokens) for a in answers] + [
        (streamed[0].prompt_tokens, streamed[0].completion_tokens)]
    assert [(r.prompt_tokens, r.completion_tokens) for r in recorded] == usages
    assert [r.completion_tokens for r in recorded] == [5, 5, 3]
    # The same rows the bill has, with the arrival time the gateway saw.
    assert [(u.prompt_tokens, u.completion_tokens) for u in rows(db_factory, UsageRecord)] == usages
    assert all(before <= r.arrived_at <= after for r in recorded)
    assert [r.arrived_at for r in recorded] == sorted(r.arrived_at for r in recorded)
    # The first prompt is new; the second repeats the long system prompt, not the question.
    first, second, _ = recorded
    assert first.shared_prefix_tokens == 0
    assert 0.5 * second.prompt_tokens < second.shared_prefix_tokens < second.prompt_tokens
    # Nothing but numbers, keyed hashes (tests/controlplane/gateway/test_prompts.py) and the deployment's name.
    assert set(TrafficSample.__table__.columns.keys()) == {
        "id", "deployment_name", "arrived_at", "prompt_tokens", "completion_tokens", "shared_prefix_tokens",
        "shared_prefix_hash", "system_prompt_tokens", "system_prompt_hash"}


@sqlite
def test_token_id_prompts_share_whole_chunks_exactly(gateway, make_tenant, db_factory):
    key = make_tenant("acme")
    prefix = [(7 * i) % 250 + 3 for i in range(3 * CHUNK_IDS)]
    for tail in ([11, 12, 13], [14, 15, 16, 17]):
        r = httpx.post(gateway.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                       json={"model": "tiny", "prompt": prefix + tail, "max_tokens": 2, "ignore_eos": True})
        assert r.status_code == 200, r.text
    settle(gateway, key)
    first, second = rows(db_factory)
    assert (first.prompt_tokens, second.prompt_tokens) == (len(prefix) + 3, len(prefix) + 4)
    assert (first.shared_prefix_tokens, second.shared_prefix_tokens) == (0, len(prefix))


@sqlite
def test_refused_and_failed_requests_leave_no_traffic(gateway, make_tenant, db_factory):
    key = make_tenant("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gateway.url + "/v1/completions", json={"model": "nope", "prompt": "x"},
                      headers=headers).status_code == 404
    assert httpx.post(gateway.url + "/v1/completions", json={"model": "empty", "prompt": "x"},
                      headers=headers).status_code == 503
    settle(gateway, key)
    assert rows(db_factory) == []


def test_the_tracker_counts_leading_chunks_seen_before_per_deployment():
    tracker = PrefixTracker()
    text = "".join(f"line {i:03d} of a long shared system prompt".ljust(CHUNK_CHARS - 1, ".") + "\n"
                   for i in range(8))
    assert len(text) == 8 * CHUNK_CHARS
    assert tracker.observe("a", text + "first question") == 0
    assert tracker.observe("a", text + "second question") == 8
    assert tracker.observe("b", text) == 0  # another deployment's prompts are not its prefix cache
    # A change in the middle ends the shared run there, even though later chunks match the text.
    edited = text[:3 * CHUNK_CHARS] + "X" + text[3 * CHUNK_CHARS + 1:]
    assert tracker.observe("a", edited) == 3
    # In tokens, in proportion to the characters shared.
    assert tracker.shared_prefix("a", text + "x" * (2 * CHUNK_CHARS), 100).tokens == 80
    # Shorter than one chunk: never counted as shared.
    assert tracker.observe("a", "short") == tracker.observe("a", "short") == 0


def test_the_tracker_forgets_the_least_recently_seen_keys_and_deployments():
    tracker = PrefixTracker(max_keys=4, max_deployments=2)
    old = "o" * (2 * CHUNK_CHARS)
    tracker.observe("a", old)
    tracker.observe("a", "n" * (4 * CHUNK_CHARS))  # four new keys push both of old's out
    assert tracker.known("a") == 4
    assert tracker.observe("a", old) == 0
    tracker.observe("b", old)
    tracker.observe("c", old)  # a third deployment: "a" was seen least recently and is forgotten
    assert tracker.known("a") == 0 and tracker.known("c") == 2


def test_prompt_of_chunks_token_ids_when_sent_as_ids_and_text_otherwise():
    assert prompt_of("completion", {"prompt": [1, 2, 3]}) == (1, 2, 3)
    assert prompt_of("completion", {"prompt": [[4, 5]]}) == (4, 5)
    assert prompt_of("completion", {"prompt": "hi"}) == "hi"
    assert prompt_of("chat", {"messages": [{"role": "user", "content": "hi"}]}) == "user\nhi\n"
