"""Quality sampling in the gateway over real HTTP: sampled answers reach the worker's queue exactly as the
client saw them, streamed or not; opted-out tenants and a rate of 0 never do; a full queue drops and counts."""

from __future__ import annotations

import queue

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.gateway.sampling import QualitySampler, SampledAnswer, SamplingTable
from llmctl.controlplane.services import tenants

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def sampled(make_gateway):
    """A gateway sampling every answer of "tiny" into a queue of 8; "flaky" is not sampled."""
    table = SamplingTable()
    table.replace({"tiny": 1.0, "flaky": 0.0})
    sampler = QualitySampler(table, queue.Queue(8), registry=CollectorRegistry())
    return make_gateway(sampler=sampler), sampler


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def drain(sampler: QualitySampler) -> list[SampledAnswer]:
    out = []
    while True:
        try:
            out.append(sampler.sink.get_nowait())
        except queue.Empty:
            return out


def test_chat_and_completion_answers_are_queued_as_the_client_saw_them(sampled, make_tenant, db_factory):
    gateway, sampler = sampled
    key = make_tenant("acme")
    oai = client(gateway, key)
    chat = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, seed=3)
    stream = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    text = oai.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0).choices[0].text
    got = drain(sampler)
    assert [s.answer for s in got] == [chat.choices[0].message.content, streamed, text]
    with session_scope(db_factory) as session:
        tenant_id = tenants.get_tenant(session, "acme").id
    assert {(s.deployment, s.revision, s.tenant_id) for s in got} == {("tiny", 1, tenant_id)}
    assert [s.kind for s in got] == ["chat", "chat", "completion"]
    # What was asked and how it was sampled; nothing about transport.
    assert got[0].request == {"messages": MESSAGES, "max_tokens": 8, "temperature": 0, "seed": 3}
    assert got[2].request == {"prompt": "Once upon", "max_tokens": 5, "temperature": 0}
    assert "stream" not in got[1].request and "stream_options" not in got[1].request


def test_opted_out_tenants_and_unsampled_deployments_are_never_queued(sampled, db_factory, make_tenant):
    gateway, sampler = sampled
    with session_scope(db_factory) as session:
        _, private = tenants.create_tenant(session, name="private", quality_opt_out=True)
    assert client(gateway, private).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    key = make_tenant("acme")
    r = httpx.post(f"{gateway.url}/v1/completions", headers={"authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "flaky", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200
    assert drain(sampler) == []


def test_a_full_queue_drops_and_counts_and_the_client_is_served_anyway(sampled, make_tenant):
    gateway, sampler = sampled
    for _ in range(sampler.sink.maxsize):
        sampler.sink.put_nowait(SampledAnswer("tiny", 1, 0, "chat", {}, "filler"))
    key = make_tenant("acme")
    reply = client(gateway, key).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert sampler.take_unrecorded_drops() == {("tiny", 1): 1}
    assert sampler.dropped.labels("tiny", "queue_full")._value.get() == 1
