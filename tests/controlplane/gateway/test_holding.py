"""Scale from zero at the gateway: requests for an autoscaled deployment wait (bounded) for a first replica."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmctl.controlplane.errors import Unavailable
from llmctl.controlplane.gateway.holding import ColdStartHold
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable


def table(holds: bool) -> RouteTable:
    routes = RouteTable()
    routes.set_endpoints("chat", [])
    routes.set_holds({"chat"} if holds else set())
    return routes


def test_a_deployment_that_is_not_autoscaled_is_not_held():
    hold = ColdStartHold(table(holds=False), timeout_s=30)
    started = time.monotonic()
    asyncio.run(hold.wait_ready("chat"))  # returns at once; the router then answers 503
    assert time.monotonic() - started < 1


def test_held_requests_go_on_once_a_replica_is_ready_and_are_counted_meanwhile():
    routes, woken = table(holds=True), []
    hold = ColdStartHold(routes, timeout_s=30, on_hold=woken.append)

    async def scenario() -> None:
        waiters = [asyncio.create_task(hold.wait_ready("chat")) for _ in range(3)]
        await asyncio.sleep(0.3)
        assert hold.held("chat") == 3 and woken == ["chat"] * 3 and not any(w.done() for w in waiters)
        routes.set_endpoints("chat", [Endpoint(1, "http://127.0.0.1:9", "chat", 1)])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)

    asyncio.run(scenario())
    assert hold.held("chat") == 0


def test_past_the_bound_or_the_timeout_the_client_gets_503_with_retry_after():
    hold = ColdStartHold(table(holds=True), max_held=1, timeout_s=0.5)

    async def scenario() -> None:
        first = asyncio.create_task(hold.wait_ready("chat"))
        await asyncio.sleep(0.1)
        with pytest.raises(Unavailable, match="1 requests already wait") as full:
            await hold.wait_ready("chat")
        assert full.value.retry_after is not None and full.value.http_status == 503
        with pytest.raises(Unavailable, match="became ready within 0.5s"):
            await first

    asyncio.run(scenario())
    assert hold.held("chat") == 0
