"""Sending one request to a replica, moving to another while nothing has reached the client yet.

An attempt fails over when the replica cannot be reached, answers 5xx, or breaks before the first byte of
its answer; each replica is tried at most once per request. A 4xx is the replica's verdict on the request
itself (too long a prompt, a bad field) and goes back to the client as is. Once a stream's first byte has
been relayed the answer cannot be replayed elsewhere, so a later failure ends the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from fastapi.responses import StreamingResponse

from llmctl.controlplane.errors import Unavailable
from llmctl.controlplane.gateway.metrics import GatewayMetrics
from llmctl.controlplane.gateway.routes import Endpoint, RouteTable
from llmctl.controlplane.gateway.routing import Router
from llmctl.controlplane.gateway.wire import UsageFilter, sse_event

logger = logging.getLogger("llmctl.gateway")


@dataclass
class Upstream:
    """A replica's answer. Streams hold their first chunk and the rest; other answers hold the whole body."""

    endpoint: Endpoint
    response: httpx.Response
    routes: RouteTable
    concurrent: int  # requests in flight on the replica when this one was sent, itself included
    started: float  # time.perf_counter() when this attempt was sent
    first: bytes = b""
    rest: AsyncIterator[bytes] | None = None
    content: bytes = b""
    _open: bool = field(default=True, repr=False)

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def media_type(self) -> str:
        return self.response.headers.get("content-type", "application/json")

    async def close(self) -> None:
        """Drop the upstream connection (aborting a stream the client left) and stop counting it in flight."""
        if self._open:
            self._open = False
            self.routes.release(self.endpoint.replica_id)
            await self.response.aclose()


async def open_upstream(client: httpx.AsyncClient, router: Router, metrics: GatewayMetrics, *,
                        deployment: str, key: str, path: str, payload: bytes, stream: bool) -> Upstream:
    """Send the request to the best replica that has not failed it yet, until one answers."""
    routes = router.routes
    tried: set[int] = set()
    failures: list[str] = []
    while True:
        try:
            endpoint = router.pick(deployment, key, tried)
        except Unavailable:
            if not failures:
                raise
            raise Unavailable(f"every ready replica of deployment '{deployment}' failed: "
                              + "; ".join(failures)) from None
        tried.add(endpoint.replica_id)
        concurrent = routes.acquire(endpoint.replica_id)
        request = client.build_request("POST", endpoint.url + path, content=payload,
                                       headers={"content-type": "application/json"})
        response: httpx.Response | None = None
        try:
            # The clock starts before the send: a replica answering a non-streamed request sends its headers
            # only once the whole answer is generated, and that time is what the request is billed for.
            sent = time.perf_counter()
            response = await client.send(request, stream=True)
            upstream = Upstream(endpoint, response, routes, concurrent, sent)
            if response.status_code >= 500:
                detail = (await response.aread())[:200].decode("utf-8", "replace")
                raise _ReplicaFailed(f"HTTP {response.status_code} {detail}".strip())
            if stream and response.status_code == 200:
                upstream.rest = response.aiter_bytes()
                upstream.first = await anext(upstream.rest, b"")
            else:
                upstream.content = await response.aread()
            return upstream
        except (httpx.TransportError, _ReplicaFailed) as exc:
            reason = str(exc) or type(exc).__name__
            failures.append(f"replica {endpoint.replica_id} at {endpoint.url}: {reason}")
            logger.warning("replica %d (%s) failed before answering: %s; trying another",
                           endpoint.replica_id, endpoint.url, reason)
            metrics.upstream_failures.labels(deployment).inc()
            await _drop(routes, endpoint, response)
        except BaseException:
            await _drop(routes, endpoint, response)
            raise


class _ReplicaFailed(Exception):
    pass


async def _drop(routes: RouteTable, endpoint: Endpoint, response: httpx.Response | None) -> None:
    routes.release(endpoint.replica_id)
    if response is not None:
        await response.aclose()


class RelayStream(StreamingResponse):
    """Closes its generator when the response ends. When the client goes away Starlette stops iterating
    but leaves a generator paused at a `yield` open until GC; closing it is what drops the upstream
    connection (so the replica aborts the request) and bills what was relayed."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def relay(upstream: Upstream, forward_usage: bool, on_end: Callable[[int, UsageFilter], None], *,
                collect_text: bool = False) -> AsyncIterator[bytes]:
    """The SSE bytes of a stream as they arrive, minus the usage chunk the client did not ask for.

    on_end(status, filter) runs once when the stream ends for any reason; status is 200, or 502 when the
    replica broke mid-stream (the client then gets an error event and [DONE]). With collect_text the filter
    keeps the content deltas (a quality sample's answer).
    """
    assert upstream.rest is not None
    seen, status = UsageFilter(forward_usage, collect_text), 200
    try:
        if out := seen.feed(upstream.first):
            yield out
        async for chunk in upstream.rest:
            if out := seen.feed(chunk):
                yield out
        if out := seen.flush():
            yield out
    except httpx.TransportError as exc:
        status = 502
        logger.warning("replica %d (%s) broke mid-stream: %r", upstream.endpoint.replica_id,
                       upstream.endpoint.url, exc)
        message = f"The replica serving this request failed mid-stream ({type(exc).__name__}); retry the request."
        yield sse_event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
        yield sse_event("[DONE]")
    finally:
        # Shielded: when the client left, this runs inside a cancelled scope that would interrupt the close.
        with anyio.CancelScope(shield=True):
            await upstream.close()
        on_end(status, seen)
