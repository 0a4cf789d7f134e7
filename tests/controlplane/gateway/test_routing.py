"""Route table and router: prefix affinity on a consistent-hash ring, gated by load."""

from __future__ import annotations

import pytest

from llmctl.controlplane.errors import InvalidArgument, NotFound, Unavailable
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from llmctl.controlplane.gateway.routing import HashRing, Router, prompt_key

SYSTEM = "You are a meticulous assistant for the llmctl project. " * 8  # longer than the affinity prefix


def table(n: int, deployment: str = "tiny") -> RouteTable:
    routes = RouteTable()
    routes.set_endpoints(deployment, [Endpoint(i, f"http://10.0.0.{i}:8000", deployment, 1) for i in range(1, n + 1)])
    return routes


def test_unknown_model_is_not_found_and_lists_the_models_that_exist():
    routes = table(2)
    routes.set_endpoints("other", [])
    with pytest.raises(NotFound, match="'nope' does not exist. Available models: 'other', 'tiny'"):
        Router(routes).pick("nope", "x")


def test_deployment_without_ready_replicas_is_unavailable():
    routes = table(2)
    routes.set_endpoints("tiny", [])
    with pytest.raises(Unavailable, match="deployment 'tiny' has no ready replicas"):
        Router(routes).pick("tiny", "x")
    assert routes.models() == [] and routes.deployments() == ["tiny"]


def test_removed_deployment_becomes_unknown():
    routes = table(2)
    routes.remove("tiny")
    with pytest.raises(NotFound, match="Available models: none"):
        Router(routes).pick("tiny", "x")


def test_endpoints_must_belong_to_the_deployment_and_be_unique():
    routes = RouteTable()
    with pytest.raises(InvalidArgument, match="belongs to deployment 'b', not 'a'"):
        routes.set_endpoints("a", [Endpoint(1, "http://h:1", "b", 1)])
    with pytest.raises(InvalidArgument, match="replica 1 is listed twice"):
        routes.set_endpoints("a", [Endpoint(1, "http://h:1", "a", 1), Endpoint(1, "http://h:2", "a", 1)])


def test_same_prefix_goes_to_the_same_replica_whatever_follows():
    router = Router(table(4))
    picks = {router.pick("tiny", prompt_key("chat", {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"}]})).replica_id
        for i in range(50)}
    assert len(picks) == 1


def test_different_prefixes_spread_over_all_replicas():
    router = Router(table(4))
    counts: dict[int, int] = {}
    for i in range(2000):
        rid = router.pick("tiny", f"prompt number {i}").replica_id
        counts[rid] = counts.get(rid, 0) + 1
    assert sorted(counts) == [1, 2, 3, 4]
    assert min(counts.values()) > 2000 * 0.15, counts


def test_adding_a_replica_moves_about_one_in_n_keys_and_only_to_it():
    keys = [f"key {i}" for i in range(3000)]
    before = HashRing(range(1, 5))
    after = HashRing(range(1, 6))
    moved = [(before.walk(k)[0], after.walk(k)[0]) for k in keys if before.walk(k)[0] != after.walk(k)[0]]
    assert all(new == 5 for _, new in moved)
    assert 0.10 < len(moved) / len(keys) < 0.30  # ideal: 1/5


def test_busy_preferred_replica_yields_to_the_least_loaded_beyond_the_margin():
    routes = table(3)
    router = Router(routes, load_margin=4)
    preferred = router.pick("tiny", SYSTEM)
    for _ in range(4):
        routes.acquire(preferred.replica_id)
    assert router.pick("tiny", SYSTEM) == preferred  # 4 more than the idle ones: within the margin
    routes.acquire(preferred.replica_id)
    other = router.pick("tiny", SYSTEM)
    assert other != preferred and routes.outstanding(other.replica_id) == 0
    for _ in range(5):
        routes.release(preferred.replica_id)
    assert router.pick("tiny", SYSTEM) == preferred and routes.outstanding(preferred.replica_id) == 0


def test_zero_margin_spreads_a_burst_of_one_prefix():
    routes = table(3)
    router = Router(routes, load_margin=0)
    picked = []
    for _ in range(6):
        ep = router.pick("tiny", SYSTEM)
        routes.acquire(ep.replica_id)
        picked.append(ep.replica_id)
    assert sorted(picked.count(r) for r in (1, 2, 3)) == [2, 2, 2]


def test_excluded_replicas_are_skipped_then_unavailable():
    routes = table(2)
    router = Router(routes)
    first = router.pick("tiny", SYSTEM)
    second = router.pick("tiny", SYSTEM, exclude={first.replica_id})
    assert second != first
    with pytest.raises(Unavailable, match="all 2 ready replicas of deployment 'tiny' failed"):
        router.pick("tiny", SYSTEM, exclude={1, 2})


def test_releasing_more_than_acquired_is_a_bug():
    routes = table(1)
    with pytest.raises(AssertionError):
        routes.release(1)


def test_prompt_key_renders_chat_roles_and_token_ids():
    chat = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prompt_key("chat", chat) == "system\nbe brief\nuser\nhi\n"
    assert prompt_key("completion", {"prompt": [[5, 6, 7]]}) == "5 6 7"
    assert prompt_key("completion", {"prompt": "x" * 1000}, chars=10) == "x" * 10


def test_prompt_key_skips_content_parts_whose_text_is_not_a_string():
    # Found by the gateway's schemathesis run: a part with "text": [null, null] was a TypeError and a 500.
    chat = {"messages": [{"role": "user", "content": [{"type": "", "text": [None, None]}, {"text": "ok"}, 7]}]}
    assert prompt_key("chat", chat) == "user\nok\n"
