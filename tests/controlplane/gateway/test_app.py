"""The gateway as tenants see it: keys, models, limits, budgets, their own usage, metrics; over real HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.controlplane.db.session import make_engine, session_factory
from llmctl.controlplane.gateway.pricing import PriceTable
from llmctl.controlplane.gateway.ratelimit import RateLimiter

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PROMPT = "The quick brown fox"


class Clock:
    def __init__(self, when: datetime = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def oai(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def complete(gateway, key: str, prompt: str = PROMPT, max_tokens: int = 6, model: str = "tiny"):
    return oai(gateway, key).completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                extra_body={"ignore_eos": True})


def post(gateway, key: str | None, body: dict, path: str = "/v1/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=60)


def metrics(gateway) -> dict[tuple[str, tuple], float]:
    text = httpx.get(gateway.url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_missing_or_wrong_key_is_401_with_an_openai_error(gateway, make_tenant):
    r = post(gateway, None, {"model": "tiny", "prompt": PROMPT})
    assert r.status_code == 401
    assert r.json() == {"error": {"message": "Missing API key: send it as the header 'Authorization: Bearer <key>'.",
                                  "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
    key = make_tenant("acme")
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        complete(gateway, key[:-1] + ("x" if key[-1] != "x" else "y"))
    with pytest.raises(openai.AuthenticationError):
        oai(gateway, "not-a-key").models.list()
    assert complete(gateway, key).usage.completion_tokens == 6


def test_models_lists_only_deployments_with_ready_replicas(gateway, make_tenant):
    key = make_tenant("acme")
    models = oai(gateway, key).models.list()
    assert [(m.id, m.object, m.owned_by) for m in models] == [("flaky", "model", "llmctl"), ("tiny", "model", "llmctl")]
    assert oai(gateway, key).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        oai(gateway, key).models.retrieve("nope")


def test_unknown_model_is_404_and_a_deployment_without_ready_replicas_is_503(gateway, make_tenant):
    key = make_tenant("acme")
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist. Available models: 'empty', 'flaky', 'tiny'"):
        complete(gateway, key, model="gpt-4")
    r = post(gateway, key, {"model": "gpt-4", "prompt": PROMPT})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    r = post(gateway, key, {"model": "empty", "prompt": PROMPT})
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "deployment 'empty' has no ready replicas"
    r = post(gateway, key, {"prompt": PROMPT})
    assert r.status_code == 400 and "must name a 'model'" in r.json()["error"]["message"]


def test_completion_through_the_gateway_is_the_replicas_own_answer(gateway, make_tenant, replicas):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 9, "temperature": 0, "ignore_eos": True}
    direct = httpx.post(replicas.live[0] + "/v1/completions", json=body, timeout=60).json()
    via = complete(gateway, make_tenant("acme"), max_tokens=9)
    assert via.choices[0].text == direct["choices"][0]["text"]
    assert (via.usage.prompt_tokens, via.usage.completion_tokens) == (direct["usage"]["prompt_tokens"], 9)


def test_tenant_over_its_rpm_gets_429_with_retry_after(make_gateway, make_tenant):
    clock = Clock()
    gateway = make_gateway(limiter=RateLimiter(clock))
    slow, other = make_tenant("slow", rpm=2), make_tenant("other")
    complete(gateway, slow)
    complete(gateway, slow)
    r = post(gateway, slow, {"model": "tiny", "prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.json()["error"]["type"] == "rate_limit_error" and "2 requests per minute" in r.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        complete(gateway, slow)
    complete(gateway, other)  # another tenant's bucket is untouched
    clock.now += 30
    complete(gateway, slow)
    assert metrics(gateway)[("llmctl_gateway_rate_limited_total", (("limit", "rpm"),))] == 2


def test_monthly_budget_refuses_once_spent_and_survives_a_gateway_restart(make_gateway, make_tenant):
    clock = Clock(datetime(2025, 3, 31, 23, 0, tzinfo=UTC))
    gateway = make_gateway(limiter=RateLimiter(clock))
    key = make_tenant("frugal", monthly_tokens=20)
    used = complete(gateway, key, max_tokens=16).usage  # starts under budget, ends over it
    assert used.total_tokens > 20
    r = post(gateway, key, {"model": "tiny", "prompt": PROMPT})
    assert r.status_code == 429 and r.headers["retry-after"] == "3600"
    assert r.json()["error"]["message"].startswith("monthly token budget of 20 tokens is spent")
    assert r.json()["error"]["code"] == "insufficient_quota"
    # A fresh gateway process knows nothing in memory: the budget comes from the usage rows in the database.
    assert httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    restarted = make_gateway(limiter=RateLimiter(clock))
    assert post(restarted, key, {"model": "tiny", "prompt": PROMPT}).status_code == 429
    clock.now += 3600  # April
    assert complete(restarted, key).usage.completion_tokens == 6


def test_usage_shows_only_the_callers_own_traffic(gateway, make_tenant):
    a, b = make_tenant("a"), make_tenant("b")
    a_used = [complete(gateway, a, max_tokens=n).usage for n in (3, 5)]
    b_used = oai(gateway, b).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello world!"}], max_tokens=4,
        extra_body={"ignore_eos": True}).usage

    def usage(key: str, **params: str) -> list[dict]:
        r = httpx.get(gateway.url + "/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    (row,) = usage(a)
    assert (row["deployment_name"], row["requests"]) == ("tiny", 2)
    assert row["prompt_tokens"] == sum(u.prompt_tokens for u in a_used)
    assert row["completion_tokens"] == 8 and row["cost_usd"] > 0
    (row,) = usage(b)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, b_used.prompt_tokens, 4)
    assert usage(a, since="2999-01-01T00:00:00Z") == []
    r = httpx.get(gateway.url + "/v1/usage", params={"since": "yesterday"}, headers={"Authorization": f"Bearer {a}"})
    assert r.status_code == 400 and "ISO 8601" in r.json()["error"]["message"]
    assert httpx.get(gateway.url + "/v1/usage").status_code == 401


def test_metrics_count_requests_per_deployment_with_latency_and_tokens(gateway, make_tenant):
    key = make_tenant("acme")
    used = [complete(gateway, key, max_tokens=n).usage for n in (2, 3)]
    post(gateway, key, {"model": "nope", "prompt": PROMPT})
    post(gateway, None, {"model": "tiny", "prompt": PROMPT})
    m = metrics(gateway)
    assert m[("llmctl_gateway_requests_total", (("code", "200"), ("deployment", "tiny")))] == 2
    assert m[("llmctl_gateway_requests_total", (("code", "404"), ("deployment", "-")))] == 1
    assert m[("llmctl_gateway_requests_total", (("code", "401"), ("deployment", "-")))] == 1
    assert m[("llmctl_gateway_request_duration_seconds_count", (("deployment", "tiny"),))] == 2
    assert m[("llmctl_gateway_request_duration_seconds_sum", (("deployment", "tiny"),))] > 0
    assert m[("llmctl_gateway_completion_tokens_total", (("deployment", "tiny"),))] == 5
    assert m[("llmctl_gateway_prompt_tokens_total", (("deployment", "tiny"),))] == sum(u.prompt_tokens for u in used)
    assert m[("llmctl_gateway_outstanding_requests", (("deployment", "tiny"), ("replica_id", "1")))] == 0


def test_a_database_that_is_gone_is_a_503_naming_it_not_a_500(make_gateway, tmp_path):
    gone = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'llmctl.db'}", check=False)
    gateway = make_gateway(db_factory=session_factory(gone))
    r = post(gateway, "llmctl-0123456789abcdef", {"model": "tiny", "prompt": PROMPT})
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert message.startswith("cannot check the API key: cannot use the database at sqlite:///"), message
    assert "no-such-dir" in message
    assert httpx.get(gateway.url + "/health").json()["status"] == "ok"


def test_an_unreachable_postgres_is_a_503_too(make_gateway, replicas):
    port = replicas.closed.rsplit(":", 1)[1]
    gone = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/llmctl", check=False, connect_timeout=2)
    gateway = make_gateway(db_factory=session_factory(gone))
    r = post(gateway, "llmctl-0123456789abcdef", {"model": "tiny", "prompt": PROMPT})
    assert r.status_code == 503
    assert "cannot check the API key: cannot use the database at postgresql+psycopg://" in r.json()["error"]["message"]


def test_a_non_streamed_request_is_billed_for_its_generation_time(make_gateway, make_tenant):
    # A replica sends a non-streamed answer's headers only when the whole answer is generated: the billed
    # replica time must start at the send, not at the headers (it was ~0 before, 1e-8 $ per request).
    gateway = make_gateway(pricing=PriceTable())
    key = make_tenant("billed")
    started = time.perf_counter()
    complete(gateway, key, max_tokens=200)
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while True:  # usage rows are written by a worker thread just after the answer
        rows = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (row,) = rows
    cost = row["cost_usd"]
    per_second = PriceTable().hourly(None) / 3600
    assert 0.5 * elapsed * per_second <= cost <= elapsed * per_second
