"""The cache's bookkeeping and the two wire shapes of a stored answer, without a gateway (milliseconds)."""

from __future__ import annotations

import json

import pytest

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.gateway.cached_answer import (
    ENTRY_OVERHEAD_BYTES,
    CachedAnswer,
    from_body,
    from_events,
)
from llmctl.controlplane.gateway.response_cache import ResponseCache, ResponseCacheConfig, deterministic, plan

CHAT_BODY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "tiny",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Keys and values."},
                          "logprobs": None, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                       "prompt_tokens_details": {"cached_tokens": 0}}}


def answer(size: int) -> CachedAnswer:
    return CachedAnswer(b"x" * (size - ENTRY_OVERHEAD_BYTES), None, 1, 1)


def test_a_full_cache_evicts_the_least_recently_used_answer():
    cache = ResponseCache(ResponseCacheConfig(max_bytes=3000, max_entry_bytes=1000))
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, "tiny", 1, answer(1000), {1})
    assert cache.get(b"a", "tiny", {1}) is not None  # now b is the least recently used
    assert cache.put(b"d", "tiny", 1, answer(1000), {1})
    assert [k for k in (b"a", b"b", b"c", b"d") if cache.get(k, "tiny", {1})] == [b"a", b"c", b"d"]
    assert cache.stats() == {"tiny": (3, 3000)} and cache.evictions() == {("tiny", "size"): 1}
    assert not cache.put(b"e", "tiny", 1, answer(1001), {1})  # over the entry bound: not kept


def test_answers_of_a_revision_that_no_longer_serves_are_dropped_and_never_stored():
    cache = ResponseCache(ResponseCacheConfig())
    cache.put(b"a", "tiny", 1, answer(500), {1})
    cache.put(b"a", "other", 1, answer(500), {1})
    assert cache.get(b"a", "tiny", {1, 2}) is not None  # a rollout: both revisions serve
    assert cache.get(b"a", "tiny", {2}) is None
    assert not cache.put(b"b", "tiny", 1, answer(500), {2})  # answered by the old revision mid-rollout
    assert cache.stats() == {"other": (1, 500)}


def test_expired_answers_leave_the_size_count():
    now = [0.0]
    cache = ResponseCache(ResponseCacheConfig(ttl_s=10), clock=lambda: now[0])
    cache.put(b"a", "tiny", 1, answer(500), {1})
    now[0] = 5
    cache.put(b"b", "tiny", 1, answer(500), {1})
    now[0] = 10
    assert cache.stats() == {"tiny": (1, 500)} and cache.get(b"b", "tiny", {1}) is not None
    assert cache.evictions() == {("tiny", "ttl"): 1}


def test_bad_bounds_are_refused():
    for bad in ({"max_bytes": 0}, {"ttl_s": 0}, {"max_entry_bytes": True}):
        with pytest.raises(InvalidArgument):
            ResponseCacheConfig(**bad)


def test_only_deterministic_requests_are_cacheable_and_neutral_fields_share_a_key():
    assert deterministic({"temperature": 0}) and deterministic({"temperature": 0.7, "seed": 3})
    assert deterministic({"top_k": 1}) and not deterministic({}) and not deterministic({"temperature": 0.2})
    assert not deterministic({"temperature": False, "seed": True})
    base = {"model": "tiny", "prompt": "hi", "temperature": 0, "stop": "\n"}

    def key(body: dict, tenant: int = 1, **kw) -> bytes | None:
        return plan("completion", body, tenant_id=tenant, cache_sampled=False, cache_control=kw.get("cc")).key

    same = {**base, "temperature": 0.0, "stop": ["\n"], "stream": True, "user": "u", "stream_options": None}
    assert key(base) == key(same) is not None
    assert key(base) != key(base, tenant=2) and key(base) != key({**base, "max_tokens": 3})
    assert key({**base, "stream": "yes"}) is None  # the replica refuses it: never answered from cache
    assert plan("chat", base, tenant_id=1, cache_sampled=False, cache_control="no-cache").lookup is False
    sampled = plan("chat", {**base, "temperature": 1}, tenant_id=1, cache_sampled=True, cache_control=None)
    assert sampled.lookup and sampled.store


def test_a_body_and_its_stream_carry_the_same_answer_with_the_prompt_counted_as_cached():
    stored = from_body("chat", json.dumps(CHAT_BODY).encode())
    assert stored is not None and stored.events is not None
    assert json.loads(stored.body)["usage"]["prompt_tokens_details"] == {"cached_tokens": 9}
    again = from_events("chat", stored.events)
    assert again is not None and json.loads(again.body) == json.loads(stored.body)
    assert again.events == stored.events


def test_incomplete_streams_and_error_events_are_not_stored():
    stored = from_body("chat", json.dumps(CHAT_BODY).encode())
    events = stored.events
    assert from_events("chat", events.removesuffix(b"data: [DONE]\n\n")) is None  # the client left
    error = b'data: {"error": {"message": "engine failed", "type": "server_error"}}\n\n'
    assert from_events("chat", events.replace(b"data: [DONE]", error + b"data: [DONE]")) is None
    no_usage = b"".join(e + b"\n\n" for e in events.split(b"\n\n") if e and b'"choices": []' not in e)
    assert from_events("chat", no_usage) is None
    assert from_body("completion", b'{"choices": [{"text": "x"}]}') is None  # no usage
