"""Model routing through real gateways to real engine replicas: the rule sends simple requests to the companion
deployment and the rest to the main one; a companion that is down, failing, unready or saturated hands the
request back to the main deployment with no failed request; decisions are counted on /metrics, and routed
answers are sampled and cached under the companion.

Deployments here: main "tiny" (the two live replicas, ids 1 and 2) and companion "flaky" (its live replica, 5,
or its closed port, 3, or its broken replica, 4, as a test needs). Replicas answer with their own name in
`model`, which says who served.
"""

from __future__ import annotations

import queue
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.gateway.model_route import ModelRoute, ModelRouteTable, parse_rule
from llmctl.controlplane.gateway.response_cache import ResponseCacheConfig
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from llmctl.controlplane.gateway.sampling import QualitySampler, SamplingTable

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SHORT = "hi, thanks!"
LONG = ("Explain how paged attention stores keys and values in fixed-size blocks, why that avoids "
        "fragmentation, and how prefix caching reuses blocks between requests that share a system prompt.")


def table_with(replicas, companion: list[int]) -> RouteTable:
    """tiny: live replicas 1 and 2; flaky: the chosen ones of closed (3), broken (4), live (5)."""
    urls = {3: replicas.closed, 4: replicas.broken, 5: replicas.flaky}
    table = RouteTable()
    table.set_endpoints("tiny", [Endpoint(i + 1, url, "tiny", 1) for i, url in enumerate(replicas.live)])
    table.set_endpoints("flaky", [Endpoint(i, urls[i], "flaky", 1) for i in companion])
    return table


def route_of(rule: str, max_in_flight: int = 0) -> ModelRouteTable:
    table = ModelRouteTable()
    table.replace({"tiny": ModelRoute("tiny", "flaky", parse_rule(rule), max_in_flight)})
    return table


def chat(gateway, key: str, text: str, **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0,
            **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60)


def metric(gateway, name: str, **labels: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def decisions(gateway, decision: str, rule: str = "max-prompt-tokens") -> float:
    return metric(gateway, "llmctl_gateway_route_decisions_total", deployment="tiny", rule=rule, decision=decision)


def test_short_prompts_go_to_the_companion_and_long_ones_to_the_main(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]), model_routes=route_of("max-prompt-tokens=20"))
    key = make_tenant("acme")
    short, long = chat(gateway, key, SHORT), chat(gateway, key, LONG)
    assert short.status_code == 200 and short.json()["model"] == "flaky"
    assert short.headers["x-llmctl-routed-to"] == "flaky"
    assert long.status_code == 200 and long.json()["model"] == "tiny" and "x-llmctl-routed-to" not in long.headers
    assert (decisions(gateway, "companion"), decisions(gateway, "main"), decisions(gateway, "fallback")) == (1, 1, 0)
    # Usage is booked where the work was done.
    usage = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert sorted((row["deployment_name"], row["requests"]) for row in usage) == [("flaky", 1), ("tiny", 1)]


def test_a_streamed_request_is_routed_too(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]), model_routes=route_of("max-prompt-tokens=20"))
    key = make_tenant("acme")
    body = {"model": "tiny", "messages": [{"role": "user", "content": SHORT}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60) as r:
        text = r.read().decode()
    assert r.status_code == 200 and r.headers["x-llmctl-routed-to"] == "flaky"
    assert '"model":"flaky"' in text.replace(" ", "") and text.endswith("data: [DONE]\n\n")


def test_the_regex_rule_reads_the_users_last_message(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]),
                           model_routes=route_of(r"regex=(?i)^(hi|thanks|translate)\b"))
    key = make_tenant("acme")
    assert chat(gateway, key, "Translate 'cat' to French").json()["model"] == "flaky"
    assert chat(gateway, key, "Hi there").json()["model"] == "flaky"
    assert chat(gateway, key, "Please translate 'cat' to French").json()["model"] == "tiny"  # not at the start
    assert decisions(gateway, "companion", "regex") == 2 and decisions(gateway, "main", "regex") == 1


@pytest.mark.parametrize("companion, reason", [([3], "companion_failed"),   # connection refused
                                               ([4], "companion_failed"),   # every generation a 500
                                               ([3, 4], "companion_failed"),
                                               ([], "no_ready_replica")])
def test_a_companion_that_cannot_serve_hands_the_request_to_the_main(make_gateway, make_tenant, replicas,
                                                                     companion, reason):
    gateway = make_gateway(routes=table_with(replicas, companion), model_routes=route_of("max-prompt-tokens=20"))
    key = make_tenant("acme")
    answers = [chat(gateway, key, SHORT) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.json()["model"] for a in answers} == {"tiny"} and all("x-llmctl-routed-to" not in a.headers
                                                                     for a in answers)
    assert decisions(gateway, "fallback") == 4 and decisions(gateway, "companion") == 0
    assert metric(gateway, "llmctl_gateway_route_fallbacks_total", deployment="tiny", reason=reason) == 4
    assert metric(gateway, "llmctl_gateway_requests_total", code="200") == 4


def test_a_saturated_companion_sends_simple_requests_to_the_main(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]),
                           model_routes=route_of("max-prompt-tokens=20", max_in_flight=1))
    key = make_tenant("acme")
    body = {"model": "tiny", "messages": [{"role": "user", "content": SHORT}], "max_tokens": 4000,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60) as held:
        assert held.headers["x-llmctl-routed-to"] == "flaky"
        assert held.status_code == 200 and gateway.routes.outstanding(5) == 1, gateway.routes.outstanding(5)
        answer = chat(gateway, key, SHORT)
        assert answer.status_code == 200 and answer.json()["model"] == "tiny"
        assert metric(gateway, "llmctl_gateway_route_fallbacks_total", deployment="tiny", reason="saturated") == 1
    deadline = time.monotonic() + 20
    while gateway.routes.outstanding(5):  # the gateway drops the abandoned stream's upstream
        assert time.monotonic() < deadline, "the abandoned stream was not released"
        time.sleep(0.05)
    assert chat(gateway, key, SHORT).json()["model"] == "flaky"  # free again


def test_routed_answers_are_sampled_and_cached_under_the_companion(make_gateway, make_tenant, replicas):
    rates = SamplingTable()
    rates.replace({"tiny": 1.0, "flaky": 1.0})
    sampler = QualitySampler(rates, queue.Queue(8), registry=CollectorRegistry())
    gateway = make_gateway(routes=table_with(replicas, [5]), model_routes=route_of("max-prompt-tokens=20"),
                           sampler=sampler, response_cache=ResponseCacheConfig())
    key = make_tenant("acme")
    first, again = chat(gateway, key, SHORT), chat(gateway, key, SHORT)
    assert first.headers["x-llmctl-cache"] == "miss" and again.headers["x-llmctl-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"] and first.json()["model"] == "flaky"
    assert again.headers["x-llmctl-routed-to"] == "flaky"
    assert sampler.sink.get_nowait().deployment == "flaky"
    assert metric(gateway, "llmctl_gateway_cache_hits_total", deployment="flaky") == 1
    assert decisions(gateway, "companion") == 2


def test_a_deployment_without_a_route_is_untouched(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]), model_routes=ModelRouteTable())
    key = make_tenant("acme")
    assert chat(gateway, key, SHORT).json()["model"] == "tiny"
    assert metric(gateway, "llmctl_gateway_route_decisions_total") == 0


def test_the_classifier_rule_routes_what_it_calls_simple(make_gateway, make_tenant, replicas):
    gateway = make_gateway(routes=table_with(replicas, [5]), model_routes=route_of("classifier"))
    key = make_tenant("acme")
    assert chat(gateway, key, "thanks a lot, bye!").json()["model"] == "flaky"
    assert chat(gateway, key, LONG).json()["model"] == "tiny"
    assert decisions(gateway, "companion", "classifier") == 1 and decisions(gateway, "main", "classifier") == 1
