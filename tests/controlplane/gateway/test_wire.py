"""The gateway's wire helpers: upstream bodies, token estimates, error bodies, the SSE usage filter."""

from __future__ import annotations

import json

import pytest

from llmctl.controlplane.errors import InvalidArgument, Unauthenticated
from llmctl.controlplane.gateway.ratelimit import RateLimited
from llmctl.controlplane.gateway.wire import (
    UsageFilter,
    error_response,
    estimate_tokens,
    parse_body,
    upstream_body,
)

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def upstream_stream(with_usage: bool) -> bytes:
    """A chat stream as the engine server writes it (with include_usage every chunk carries usage: null)."""
    extra = {"usage": None} if with_usage else {}
    chunks = [{"id": "c", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}], **extra}
              for t in ("Hel", "lo", "")]
    events = [json.dumps(c) for c in chunks]
    if with_usage:
        events.append(json.dumps({"id": "c", "choices": [], "usage": USAGE}))
    return "".join(f"data: {e}\n\n" for e in [*events, "[DONE]"]).encode()


@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_filter_hides_usage_from_clients_that_did_not_ask(piece):
    raw = upstream_stream(with_usage=True)
    seen = UsageFilter(forward_usage=False)
    out = b"".join(seen.feed(raw[i:i + piece]) for i in range(0, len(raw), piece)) + seen.flush()
    assert out == upstream_stream(with_usage=False)  # byte for byte what the client would have got
    assert seen.usage == USAGE and seen.content_chunks == 2


def test_filter_passes_everything_through_to_clients_that_asked():
    raw = upstream_stream(with_usage=True)
    seen = UsageFilter(forward_usage=True)
    assert seen.feed(raw) + seen.flush() == raw and seen.usage == USAGE


def test_streams_always_ask_upstream_for_usage_and_other_bodies_pass_unchanged():
    raw = b'{"model": "m", "stream": true, "stream_options": {"continuous_usage_stats": false}}'
    sent = json.loads(upstream_body(json.loads(raw), raw))
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    plain = b'{"model":  "m", "prompt": "x"}'
    assert upstream_body(json.loads(plain), plain) is plain


def test_estimate_is_max_tokens_plus_a_quarter_of_the_prompt_characters():
    assert estimate_tokens("completion", {"prompt": "x" * 40, "max_tokens": 10}) == 20
    assert estimate_tokens("completion", {"prompt": [1, 2, 3]}) == 3 + 16
    chat = {"messages": [{"role": "user", "content": "x" * 34}], "max_completion_tokens": 5}
    assert estimate_tokens("chat", chat) == 5 + 10  # "user\n" + 34 + "\n" = 40 characters


@pytest.mark.parametrize("raw, message", [
    (b"{oops", "Malformed JSON body"),
    (b"[1]", "must be a JSON object"),
    (b'{"prompt": "x"}', "must name a 'model'"),
])
def test_bad_bodies_are_invalid_arguments(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_body(raw)


def test_error_bodies_are_openai_shaped_and_429_says_when_to_retry():
    r = error_response(RateLimited("slow down", 2.2, "rpm"))
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert json.loads(r.body) == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                            "code": "rate_limit_exceeded"}}
    r = error_response(Unauthenticated("invalid API key"))
    assert r.status_code == 401 and json.loads(r.body)["error"]["code"] == "invalid_api_key"
