"""The exact response cache through a real gateway in front of real replicas: hits never reach a replica and
return the stored bytes; sampled requests, other tenants, no-cache and a new revision never hit."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.response_cache import ResponseCacheConfig
from llmctl.controlplane.gateway.routes import Endpoint
from llmctl.controlplane.services import tenants

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

CHAT = [{"role": "user", "content": "What does a paged KV cache store?"}]
COMPLETION = {"model": "tiny", "prompt": "Prefix caching reuses", "max_tokens": 6, "temperature": 0,
              "ignore_eos": True}


@pytest.fixture
def cached(make_gateway):
    return make_gateway(response_cache=ResponseCacheConfig())


def post(gateway, key: str, body: dict, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    r = httpx.post(gateway.url + path, json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def served(replicas) -> float:
    """Requests the live replicas have finished (every test request ends by length: ignore_eos)."""
    total = 0.0
    for url in replicas.live:
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            total += sum(s.value for s in family.samples if s.name == "llmctl_requests_finished_total")
    return total


def metric(gateway, name: str, **labels: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def as_hit(answer: dict) -> dict:
    """The answer with its usage reported as served from cache."""
    usage = answer["usage"]
    return {**answer, "usage": {**usage, "prompt_tokens_details": {"cached_tokens": usage["prompt_tokens"]}}}


def test_a_repeated_deterministic_request_is_answered_from_cache_without_a_replica(cached, make_tenant, replicas):
    key = make_tenant("acme")
    before = served(replicas)
    miss = post(cached, key, COMPLETION)
    hits = [post(cached, key, {**COMPLETION, "user": "someone-else", "temperature": 0.0}) for _ in range(2)]
    assert served(replicas) == before + 1
    assert miss.headers["x-llmctl-cache"] == "miss" and all(h.headers["x-llmctl-cache"] == "hit" for h in hits)
    # The stored answer unchanged (id and created too) but for its usage; every hit is the same bytes.
    assert hits[0].content == hits[1].content
    assert hits[0].json() == as_hit(miss.json()) and miss.json()["usage"]["completion_tokens"] == 6
    assert metric(cached, "llmctl_gateway_cache_hits_total", deployment="tiny") == 2
    assert metric(cached, "llmctl_gateway_cache_misses_total", deployment="tiny") == 1
    assert metric(cached, "llmctl_gateway_cache_served_tokens_total", deployment="tiny") == 12
    assert metric(cached, "llmctl_gateway_cache_entries", deployment="tiny") == 1
    assert metric(cached, "llmctl_gateway_cache_bytes", deployment="tiny") > len(miss.content)
    # Hits count as requests but computed nothing: no tokens, no cost.
    (row,) = httpx.get(cached.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert (row["requests"], row["completion_tokens"]) == (3, 6)
    assert metric(cached, "llmctl_gateway_completion_tokens_total", deployment="tiny") == 6


def stream_raw(gateway, key: str, body: dict) -> tuple[bytes, str]:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return r.read(), r.headers["x-llmctl-cache"]


def stream_text(raw: bytes) -> str:
    events = [json.loads(e.removeprefix(b"data: ")) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])


def test_streams_are_replayed_byte_for_byte_and_either_shape_serves_the_other(cached, make_tenant, replicas):
    key = make_tenant("acme")
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "seed": 7, "temperature": 0.8, "ignore_eos": True,
            "stream": True}
    before = served(replicas)
    miss, hit = stream_raw(cached, key, body), stream_raw(cached, key, body)
    assert (miss[1], hit[1]) == ("miss", "hit") and hit[0] == miss[0]
    assert miss[0].endswith(b"data: [DONE]\n\n") and b"usage" not in miss[0]
    # A client asking for usage gets the usage chunk, reporting the prompt as cached.
    with_usage, state = stream_raw(cached, key, {**body, "stream_options": {"include_usage": True}})
    usage = json.loads(with_usage.split(b"\n\n")[-3].removeprefix(b"data: "))["usage"]
    assert state == "hit" and usage["completion_tokens"] == 8
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] > 0
    # The non-streamed shape of the streamed answer: the same text.
    whole = post(cached, key, {**body, "stream": False}, "/v1/chat/completions")
    assert whole.headers["x-llmctl-cache"] == "hit"
    assert whole.json()["choices"][0]["message"]["content"] == stream_text(miss[0])
    assert whole.json()["choices"][0]["finish_reason"] == "length"
    # And the other way round: a non-streamed answer replayed as a stream.
    plain = {**body, "stream": False, "seed": 8}
    first = post(cached, key, plain, "/v1/chat/completions")
    replayed, state = stream_raw(cached, key, {**plain, "stream": True})
    assert state == "hit" and stream_text(replayed) == first.json()["choices"][0]["message"]["content"]
    assert served(replicas) == before + 2


def test_sampled_requests_are_never_served_from_cache_unless_the_tenant_opts_in(cached, make_tenant, replicas,
                                                                                   db_factory):
    key = make_tenant("acme")
    sampled = {**COMPLETION, "temperature": 1.0}
    before = served(replicas)
    answers = [post(cached, key, sampled) for _ in range(2)] + [post(cached, key, {**COMPLETION, "temperature": None})]
    assert [r.headers["x-llmctl-cache"] for r in answers] == ["bypass"] * 3
    assert served(replicas) == before + 3
    assert metric(cached, "llmctl_gateway_cache_bypass_total", deployment="tiny", reason="sampled") == 3
    assert metric(cached, "llmctl_gateway_cache_entries", deployment="tiny") == 0
    with session_scope(db_factory) as session:
        tenants.set_cache_sampled(session, name="acme", cache_sampled=True)
    assert [post(cached, key, sampled).headers["x-llmctl-cache"] for _ in range(2)] == ["miss", "hit"]
    assert served(replicas) == before + 4


def test_another_tenant_never_gets_a_tenants_cached_answer(cached, make_tenant, replicas):
    acme, rival = make_tenant("acme"), make_tenant("rival")
    before = served(replicas)
    assert post(cached, acme, COMPLETION).headers["x-llmctl-cache"] == "miss"
    assert post(cached, rival, COMPLETION).headers["x-llmctl-cache"] == "miss"
    assert post(cached, rival, COMPLETION).headers["x-llmctl-cache"] == "hit"
    assert served(replicas) == before + 2
    assert metric(cached, "llmctl_gateway_cache_entries", deployment="tiny") == 2


def test_no_cache_bypasses_the_lookup_and_stores_the_fresh_answer(cached, make_tenant, replicas):
    key = make_tenant("acme")
    before = served(replicas)
    post(cached, key, COMPLETION)
    fresh = post(cached, key, COMPLETION, **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-llmctl-cache"] == "bypass"
    again = post(cached, key, COMPLETION)
    assert again.headers["x-llmctl-cache"] == "hit" and again.json()["id"] == fresh.json()["id"]
    unstored = {**COMPLETION, "max_tokens": 5}
    assert post(cached, key, unstored, **{"Cache-Control": "no-store"}).headers["x-llmctl-cache"] == "bypass"
    assert post(cached, key, unstored).headers["x-llmctl-cache"] == "miss"
    assert served(replicas) == before + 4
    assert metric(cached, "llmctl_gateway_cache_bypass_total", deployment="tiny", reason="no_cache") == 1
    assert metric(cached, "llmctl_gateway_cache_bypass_total", deployment="tiny", reason="no_store") == 1


def test_a_new_revision_never_gets_the_old_revisions_answers(cached, make_tenant, replicas):
    key = make_tenant("acme")
    post(cached, key, COMPLETION)
    assert post(cached, key, COMPLETION).headers["x-llmctl-cache"] == "hit"
    cached.routes.set_endpoints("tiny", [Endpoint(i + 1, url, "tiny", 2) for i, url in enumerate(replicas.live)])
    before = served(replicas)
    assert post(cached, key, COMPLETION).headers["x-llmctl-cache"] == "miss"
    assert served(replicas) == before + 1
    assert metric(cached, "llmctl_gateway_cache_evictions_total", deployment="tiny", reason="revision") == 1
    assert metric(cached, "llmctl_gateway_cache_entries", deployment="tiny") == 1
    assert post(cached, key, COMPLETION).headers["x-llmctl-cache"] == "hit"


def test_without_a_cache_every_request_reaches_a_replica_and_no_header_is_sent(gateway, make_tenant, replicas):
    key = make_tenant("acme")
    before = served(replicas)
    answers = [post(gateway, key, COMPLETION) for _ in range(2)]
    assert served(replicas) == before + 2 and all("x-llmctl-cache" not in r.headers for r in answers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_answers_expire_after_the_ttl(make_gateway, make_tenant, replicas):
    gateway = make_gateway(response_cache=ResponseCacheConfig(ttl_s=60))
    gateway.gw.cache.clock = clock = Clock()
    key = make_tenant("acme")
    post(gateway, key, COMPLETION)
    clock.now += 59
    assert post(gateway, key, COMPLETION).headers["x-llmctl-cache"] == "hit"
    clock.now += 2
    before = served(replicas)
    assert post(gateway, key, COMPLETION).headers["x-llmctl-cache"] == "miss"
    assert served(replicas) == before + 1
    assert metric(gateway, "llmctl_gateway_cache_evictions_total", deployment="tiny", reason="ttl") == 1


def test_an_answer_over_the_entry_bound_is_relayed_but_not_kept(make_gateway, make_tenant):
    key = make_tenant("acme")
    small, large = {**COMPLETION, "max_tokens": 2}, {**COMPLETION, "max_tokens": 40}
    measure = make_gateway(response_cache=ResponseCacheConfig())
    post(measure, key, small)
    size = metric(measure, "llmctl_gateway_cache_bytes", deployment="tiny")
    gateway = make_gateway(response_cache=ResponseCacheConfig(max_entry_bytes=int(size)))
    assert [post(gateway, key, large).headers["x-llmctl-cache"] for _ in range(2)] == ["miss", "miss"]
    assert [post(gateway, key, small).headers["x-llmctl-cache"] for _ in range(2)] == ["miss", "hit"]
