"""The semantic response cache through a real gateway in front of real replicas, with the real embedding
model: a reworded question gets the stored answer without reaching a replica; a near miss, another tenant, a
sampled request, another system prompt, a new revision and a deployment that did not opt in never do."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.gateway.embedding import shared_embedder
from llmctl.controlplane.gateway.response_cache import ResponseCacheConfig
from llmctl.controlplane.gateway.routes import Endpoint
from llmctl.controlplane.gateway.semantic_cache import DEFAULT_THRESHOLD, SemanticTable

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SYSTEM = {"role": "system", "content": "You are a terse programming assistant."}
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "What's the way to reverse a Python list?"
NEAR_MISS = "How do I reverse a list in JavaScript?"


def chat(text: str, *, system: dict = SYSTEM, **fields) -> dict:
    return {"model": "tiny", "messages": [system, {"role": "user", "content": text}], "max_tokens": 6,
            "temperature": 0, "ignore_eos": True, **fields}


@pytest.fixture
def semantic(make_gateway):
    return make_gateway(response_cache=ResponseCacheConfig(), semantic=SemanticTable({"tiny": DEFAULT_THRESHOLD}),
                        embedder=shared_embedder())


def post(gateway, key: str, body: dict, **headers: str) -> httpx.Response:
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {key}", **headers})
    assert r.status_code == 200, r.text
    return r


def states(gateway, key: str, *bodies: dict) -> list[str]:
    return [post(gateway, key, body).headers["x-llmctl-cache"] for body in bodies]


def served(replicas) -> float:
    """Requests the live replicas have finished."""
    total = 0.0
    for url in replicas.live:
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            total += sum(s.value for s in family.samples if s.name == "llmctl_requests_finished_total")
    return total


def metric(gateway, name: str, **labels: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_reworded_question_gets_the_stored_answer_without_a_replica(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    before = served(replicas)
    miss = post(semantic, key, chat(QUESTION))
    hit = post(semantic, key, chat(PARAPHRASE))
    assert (miss.headers["x-llmctl-cache"], hit.headers["x-llmctl-cache"]) == ("miss", "semantic-hit")
    assert served(replicas) == before + 1
    assert hit.json()["id"] == miss.json()["id"]
    assert hit.json()["choices"] == miss.json()["choices"]
    usage = hit.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]
    # Semantic hits are told apart from exact ones in /metrics.
    assert metric(semantic, "llmctl_gateway_semantic_cache_hits_total", deployment="tiny") == 1
    assert metric(semantic, "llmctl_gateway_semantic_cache_misses_total", deployment="tiny") == 1
    assert metric(semantic, "llmctl_gateway_cache_hits_total", deployment="tiny") == 0
    assert metric(semantic, "llmctl_gateway_semantic_cache_served_tokens_total", deployment="tiny") == 6
    assert metric(semantic, "llmctl_gateway_semantic_cache_entries", deployment="tiny") == 1
    assert metric(semantic, "llmctl_gateway_semantic_embed_seconds_count", deployment="tiny") == 2
    # The exact repeat is still an exact hit; hits bill no tokens.
    assert states(semantic, key, chat(QUESTION)) == ["hit"]
    (row,) = httpx.get(semantic.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert (row["requests"], row["completion_tokens"]) == (3, 6)


def test_a_reworded_question_is_replayed_as_a_stream(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    post(semantic, key, chat(QUESTION))
    with httpx.stream("POST", semantic.url + "/v1/chat/completions", json=chat(PARAPHRASE, stream=True),
                      headers={"Authorization": f"Bearer {key}"}, timeout=120) as r:
        body = r.read()
        assert r.headers["x-llmctl-cache"] == "semantic-hit"
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_near_miss_is_sent_to_a_replica(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    before = served(replicas)
    assert states(semantic, key, chat(QUESTION), chat(NEAR_MISS), chat("How do I sort a list in Python?")) == \
        ["miss"] * 3
    assert served(replicas) == before + 3
    assert metric(semantic, "llmctl_gateway_semantic_cache_entries", deployment="tiny") == 3


def test_another_tenant_never_gets_a_tenants_answer(semantic, make_tenant, replicas):
    acme, rival = make_tenant("acme"), make_tenant("rival")
    before = served(replicas)
    assert states(semantic, acme, chat(QUESTION)) == ["miss"]
    assert states(semantic, rival, chat(PARAPHRASE)) == ["miss"]
    assert served(replicas) == before + 2
    # rival's own answer now serves rival's rewordings, and only rival's.
    assert states(semantic, rival, chat(QUESTION)) == ["semantic-hit"]
    assert post(semantic, rival, chat(QUESTION)).json() != post(semantic, acme, chat(QUESTION)).json()


def test_sampled_and_no_cache_requests_never_get_a_semantic_hit(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    post(semantic, key, chat(QUESTION))
    before = served(replicas)
    sampled = chat(PARAPHRASE, temperature=1.0)
    assert states(semantic, key, sampled, sampled) == ["bypass", "bypass"]
    fresh = post(semantic, key, chat(PARAPHRASE), **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-llmctl-cache"] == "bypass"
    assert served(replicas) == before + 3
    assert metric(semantic, "llmctl_gateway_semantic_cache_hits_total", deployment="tiny") == 0


def test_only_the_last_user_message_may_differ(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    post(semantic, key, chat(QUESTION))
    other_system = {"role": "system", "content": "You are a verbose programming tutor."}
    earlier = {"role": "user", "content": "I use Python 3.12."}
    two_turns = {**chat(PARAPHRASE), "messages": [SYSTEM, earlier, {"role": "user", "content": PARAPHRASE}]}
    before = served(replicas)
    assert states(semantic, key, chat(PARAPHRASE, system=other_system), chat(PARAPHRASE, max_tokens=5),
                  chat(PARAPHRASE, seed=3), two_turns) == ["miss"] * 4
    assert served(replicas) == before + 4


def test_the_semantic_cache_is_off_unless_the_deployment_opts_in(make_gateway, make_tenant, replicas):
    key = make_tenant("acme")
    table = SemanticTable()
    gateway = make_gateway(response_cache=ResponseCacheConfig(), semantic=table, embedder=shared_embedder())
    before = served(replicas)
    assert states(gateway, key, chat(QUESTION), chat(PARAPHRASE), chat(QUESTION)) == ["miss", "miss", "hit"]
    assert served(replicas) == before + 2
    assert metric(gateway, "llmctl_gateway_semantic_embed_seconds_count") == 0
    table.replace({"tiny": DEFAULT_THRESHOLD})
    assert states(gateway, key, chat("How can I reverse a Python list?"),
                  chat("In Python, how do I reverse a list?")) == ["miss", "semantic-hit"]


def test_a_new_revision_never_gets_the_old_revisions_answers(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    post(semantic, key, chat(QUESTION))
    assert states(semantic, key, chat(PARAPHRASE)) == ["semantic-hit"]
    semantic.routes.set_endpoints("tiny", [Endpoint(i + 1, url, "tiny", 2) for i, url in enumerate(replicas.live)])
    before = served(replicas)
    assert states(semantic, key, chat(PARAPHRASE)) == ["miss"]
    assert served(replicas) == before + 1
    assert metric(semantic, "llmctl_gateway_semantic_cache_entries", deployment="tiny") == 1
    assert states(semantic, key, chat(QUESTION)) == ["semantic-hit"]


def test_a_near_miss_the_embedding_cannot_tell_apart_is_refused_by_the_guard(semantic, make_tenant, replicas):
    key = make_tenant("acme")
    # all-MiniLM-L6-v2 scores these two 0.99: only the word-level guard keeps them apart.
    assert states(semantic, key, chat("Convert 5 kilograms to pounds."), chat("Convert 5 pounds to kilograms.")) == \
        ["miss"] * 2
    assert metric(semantic, "llmctl_gateway_semantic_cache_guard_rejections_total", deployment="tiny") == 1
    assert metric(semantic, "llmctl_gateway_semantic_cache_hits_total", deployment="tiny") == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reworded_questions_stop_hitting_after_the_ttl(make_gateway, make_tenant, replicas):
    gateway = make_gateway(response_cache=ResponseCacheConfig(ttl_s=60),
                           semantic=SemanticTable({"tiny": DEFAULT_THRESHOLD}), embedder=shared_embedder())
    gateway.gw.cache.clock = gateway.gw.index.clock = clock = Clock()
    key = make_tenant("acme")
    post(gateway, key, chat(QUESTION))
    clock.now += 59
    assert states(gateway, key, chat(PARAPHRASE)) == ["semantic-hit"]
    clock.now += 2
    before = served(replicas)
    assert states(gateway, key, chat("Python: how can I reverse a list?")) == ["miss"]
    assert served(replicas) == before + 1
