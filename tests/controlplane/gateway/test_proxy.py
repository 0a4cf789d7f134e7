"""Proxying to real replicas: streams relayed as the replica wrote them, failover, prefix affinity under load."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.gateway.routes import Endpoint
from llmctl.controlplane.gateway.routing import HashRing, prompt_key

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

CHAT = [{"role": "user", "content": "Paged attention stores keys and values"}]
SYSTEM = ("You are the llmctl assistant. Answer questions about paged attention, continuous batching and "
          "prefix caching precisely, cite the relevant engine module, and keep every answer short. ") * 3


def sse_payloads(raw: str) -> list[str]:
    events = raw.split("\n\n")
    assert events[-1] == "" and all(e.startswith("data: ") for e in events[:-1]), raw
    return [e.removeprefix("data: ") for e in events[:-1]]


def stream_raw(url: str, body: dict, key: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return sse_payloads(r.read().decode())


def without_ids(payloads: list[str]) -> list:
    return [p if p == "[DONE]" else {k: v for k, v in json.loads(p).items() if k not in ("id", "created")}
            for p in payloads]


def finished_on(url: str, reason: str = "length") -> float:
    """The replica's own count of requests that ended with `reason`."""
    text = httpx.get(url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "llmctl_requests_finished_total" and s.labels.get("finished_reason") == reason)


def gateway_metric(gateway, name: str, **labels: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_streaming_chat_relays_exactly_the_replicas_events(gateway, make_tenant, replicas):
    key = make_tenant("acme")
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "stream": True}
    direct = stream_raw(replicas.live[0], body)
    via = stream_raw(gateway.url, body, key)
    # The gateway asked upstream for usage; a client that did not ask sees no trace of it.
    assert without_ids(via) == without_ids(direct) and all("usage" not in p for p in via)
    text = "".join(c.choices[0].delta.content or "" for c in oai_stream(gateway, key, CHAT, 12) if c.choices)
    assert text == "".join(json.loads(p)["choices"][0]["delta"].get("content", "") for p in direct[:-1])


def oai_stream(gateway, key, messages, max_tokens, **extra):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    return list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True}, **extra))


def test_a_client_that_asks_for_usage_gets_it_and_is_billed_for_it(gateway, make_tenant):
    key = make_tenant("acme")
    chunks = oai_stream(gateway, key, CHAT, 7, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    r = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    (row,) = r.json()["data"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1, chunks[-1].usage.prompt_tokens, 7)


def test_requests_fail_over_to_another_replica_before_the_first_byte(gateway, make_tenant):
    """flaky = a closed port (3), a replica whose engine is down and answers 500 (4), a live replica (5)."""
    key = make_tenant("acme")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    prompts = [f"Prompt number {i} about caching" for i in range(8)]
    for i, prompt in enumerate(prompts):
        if i % 2:
            out = client.completions.create(model="flaky", prompt=prompt, max_tokens=3, extra_body={"ignore_eos": True})
            assert out.usage.completion_tokens == 3
        else:
            chunks = list(client.completions.create(model="flaky", prompt=prompt, max_tokens=3, stream=True,
                                                    extra_body={"ignore_eos": True}))
            assert sum(1 for c in chunks if c.choices[0].text) >= 1
    # Each request tried the dead replicas that come before the live one in its ring order, exactly once each.
    ring = HashRing([3, 4, 5])
    expected = sum(ring.walk(prompt_key("completion", {"prompt": p})).index(5) for p in prompts)
    assert expected >= 2  # the prompts do exercise failover
    assert gateway_metric(gateway, "llmctl_gateway_upstream_failures_total", deployment="flaky") == expected
    assert gateway_metric(gateway, "llmctl_gateway_requests_total", deployment="flaky", code="200") == 8
    assert all(gateway.routes.outstanding(r) == 0 for r in (3, 4, 5))


def test_when_every_replica_fails_the_client_gets_503_naming_each(gateway, make_tenant, replicas):
    gateway.routes.set_endpoints("flaky", [Endpoint(7, replicas.closed, "flaky", 1),
                                           Endpoint(8, replicas.broken, "flaky", 1)])
    r = httpx.post(gateway.url + "/v1/completions", json={"model": "flaky", "prompt": "x"},
                   headers={"Authorization": f"Bearer {make_tenant('acme')}"}, timeout=60)
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert message.startswith("every ready replica of deployment 'flaky' failed")
    assert f"replica 7 at {replicas.closed}" in message and "replica 8" in message and "HTTP 500" in message


def test_a_replicas_4xx_reaches_the_client_unchanged_and_is_not_retried(gateway, make_tenant):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=make_tenant("acme"), max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096 tokens") as info:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5000)
    assert info.value.body["code"] == "context_length_exceeded"
    assert gateway_metric(gateway, "llmctl_gateway_upstream_failures_total") == 0
    assert gateway_metric(gateway, "llmctl_gateway_requests_total", deployment="tiny", code="400") == 1


def test_a_refused_request_field_reaches_the_client_unchanged(gateway, make_tenant, replicas):
    headers = {"Authorization": f"Bearer {make_tenant('acme')}"}
    # The stream's body is rewritten on the way (it always asks for usage); the refusal must survive that too.
    for path, body, param in [
        ("/v1/completions", {"model": "tiny", "prompt": "Hello", "best_of": 3}, "best_of"),
        ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "stream": True, "logit_bias": {"50": 100}},
         "logit_bias"),
    ]:
        direct = httpx.post(replicas.live[0] + path, json=body, timeout=60)
        r = httpx.post(gateway.url + path, json=body, headers=headers, timeout=60)
        assert (r.status_code, r.json()) == (400, direct.json())
        assert r.json()["error"]["param"] == param


def test_a_shared_system_prompt_sticks_to_one_replica_when_load_is_even(gateway, make_tenant, replicas):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=make_tenant("acme"), max_retries=0)
    before = [finished_on(url) for url in replicas.live]
    for i in range(6):
        client.chat.completions.create(
            model="tiny", max_tokens=2, extra_body={"ignore_eos": True},
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}?"}])
    served = sorted(finished_on(url) - b for url, b in zip(replicas.live, before, strict=True))
    assert served == [0, 6]


def hold_streams(stack: ExitStack, gateway, key: str, n: int) -> None:
    """Open n long streams with the same prompt and keep them open (the gateway answers once a token exists)."""
    client = stack.enter_context(httpx.Client(timeout=60))
    body = {"model": "tiny", "max_tokens": 3500, "ignore_eos": True, "stream": True,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Go on."}]}
    for _ in range(n):
        r = stack.enter_context(client.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                                              headers={"Authorization": f"Bearer {key}"}))
        assert r.status_code == 200


@pytest.mark.parametrize("load_margin, spread", [(4, [0, 4]), (0, [2, 2])])
def test_a_burst_of_one_prefix_spreads_only_beyond_the_load_margin(make_gateway, make_tenant, replicas,
                                                                    load_margin, spread):
    gateway = make_gateway(load_margin=load_margin)
    key = make_tenant("acme")
    aborted = sum(finished_on(url, "abort") for url in replicas.live)
    with ExitStack() as stack:
        hold_streams(stack, gateway, key, 4)
        assert sorted(gateway.routes.outstanding(r) for r in (1, 2)) == spread
    # Clients that hang up free their replica slots, and the replicas stop generating for them.
    deadline = time.monotonic() + 20
    while (gateway.routes.outstanding(1) or gateway.routes.outstanding(2)
           or sum(finished_on(url, "abort") for url in replicas.live) < aborted + 4):
        assert time.monotonic() < deadline, "abandoned streams were not released"
        time.sleep(0.05)


def test_a_replica_that_dies_mid_stream_ends_the_stream_with_an_error(make_gateway, make_tenant, routes, tiny_4k,
                                                                       serve):
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_4k), dtype="float32", num_kv_blocks=1024))
    gateway = make_gateway()
    key = make_tenant("acme")
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 3500, "ignore_eos": True, "stream": True}
    with ExitStack() as replica:
        url = replica.enter_context(serve(build_app(engine, "tiny"), timeout_graceful_shutdown=0.2))
        routes.set_endpoints("tiny", [Endpoint(9, url, "tiny", 1)])
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            replica.close()  # the replica goes away while the stream is running
            payloads = [line.removeprefix("data: ") for line in lines if line]
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert "failed mid-stream" in error["message"] and error["type"] == "server_error"
    assert gateway_metric(gateway, "llmctl_gateway_requests_total", deployment="tiny", code="502") == 1
    assert gateway.routes.outstanding(9) == 0
    assert gateway_metric(gateway, "llmctl_gateway_upstream_failures_total") == 0  # nothing was retried
