"""The gateway on PostgreSQL: keys, usage rows and the monthly budget round-trip through the real server."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


def test_usage_and_budget_round_trip_through_postgres(make_gateway, make_tenant):
    gateway = make_gateway()
    key, other = make_tenant("pg-tenant", monthly_tokens=40), make_tenant("pg-other")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "Prefix caching", "max_tokens": 40, "ignore_eos": True}
    r = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    used = r.json()["usage"]
    assert httpx.post(gateway.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {other}"},
                      timeout=60).status_code == 200
    (row,) = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["data"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1, used["prompt_tokens"], 40)
    # A second gateway reads the month's usage back from PostgreSQL and refuses the spent budget.
    restarted = make_gateway()
    r = httpx.post(restarted.url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 429 and "monthly token budget of 40 tokens is spent" in r.json()["error"]["message"]
