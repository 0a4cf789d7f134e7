"""The gateway's HTTP app: OpenAI-compatible routes in front of the ready replicas of every deployment.

Per request: authenticate the tenant's key, check the model is routable, admit it under the tenant's
limits, proxy it to a replica (see proxy.py), relay the answer, then bill the usage the replica reported
and record the request's shape (arrival, token counts, shared prefix; see traffic.py) for the optimizer.
SQL runs in worker threads so the event loop never waits on the database; usage rows are written after
the answer, and /v1/usage waits for the caller's own pending rows so a tenant always reads its writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmctl.controlplane.errors import ControlPlaneError, InvalidArgument
from llmctl.controlplane.gateway.billing import Bill, TenantStore
from llmctl.controlplane.gateway.holding import ColdStartHold
from llmctl.controlplane.gateway.metrics import NO_DEPLOYMENT, GatewayMetrics
from llmctl.controlplane.gateway.pricing import PriceTable
from llmctl.controlplane.gateway.proxy import RelayStream, open_upstream, relay
from llmctl.controlplane.gateway.ratelimit import RateLimited, RateLimiter
from llmctl.controlplane.gateway.routes import RouteTable
from llmctl.controlplane.gateway.routing import ModelNotFound, Router, prompt_key
from llmctl.controlplane.gateway.sampling import QualitySampler, parse_json
from llmctl.controlplane.gateway.traffic import PrefixTracker, prompt_of
from llmctl.controlplane.gateway.wire import (
    UsageFilter,
    client_wants_usage,
    error_body,
    error_response,
    estimate_prompt_tokens,
    estimate_tokens,
    parse_body,
    upstream_body,
    wants_stream,
)

logger = logging.getLogger("llmctl.gateway")


class Gateway:
    """Everything one gateway app holds; the route functions in build_gateway_app are thin wrappers."""

    def __init__(self, *, routes: RouteTable, db_factory: Any, limiter: RateLimiter, pricing: PriceTable,
                 gpu_of: Callable[[int], str | None], client: httpx.AsyncClient | None,
                 affinity_prefix_chars: int, load_margin: int, metrics_registry: CollectorRegistry | None,
                 sampler: QualitySampler | None = None, hold: ColdStartHold | None = None):
        if affinity_prefix_chars < 1:
            raise InvalidArgument(f"affinity_prefix_chars must be >= 1, got {affinity_prefix_chars}")
        self.routes, self.limiter, self.pricing, self.gpu_of = routes, limiter, pricing, gpu_of
        self.router = Router(routes, load_margin=load_margin)
        self.traffic = PrefixTracker()
        self.store = TenantStore(db_factory, limiter, self.traffic)
        self.metrics = GatewayMetrics(routes, metrics_registry)
        self.affinity_prefix_chars = affinity_prefix_chars
        self.client = client
        self.sampler = sampler
        self.hold = hold
        self.created = int(time.time())

    async def handle(self, request: Request, kind: str, path: str) -> Response:
        """Proxy one completion (kind "completion") or chat completion (kind "chat")."""
        arrived, arrived_at = time.perf_counter(), datetime.fromtimestamp(self.limiter.clock(), UTC)
        label, admission = NO_DEPLOYMENT, None
        try:
            tenant = await self.store.authenticate(request.headers.get("authorization"))
            raw = await request.body()
            body = parse_body(raw)
            model = body["model"]
            if self.hold is not None:
                await self.hold.wait_ready(model)  # an autoscaled deployment at zero replicas: wait for one
            self.router.check(model)
            label = model
            admission = self.limiter.admit(tenant, estimate_tokens(kind, body))
            assert self.client is not None, "the app's lifespan has not started"
            stream = wants_stream(body)
            upstream = await open_upstream(
                self.client, self.router, self.metrics, deployment=model, path=path, stream=stream,
                key=prompt_key(kind, body, self.affinity_prefix_chars), payload=upstream_body(body, raw),
            )
        except ControlPlaneError as exc:
            if admission is not None:
                self.limiter.settle(admission, 0)
            if isinstance(exc, RateLimited):
                self.metrics.rate_limited.labels(exc.limit).inc()
            self.metrics.answered(label, exc.http_status, time.perf_counter() - arrived)
            return error_response(exc)
        except BaseException:  # the client left mid-attempt, or a bug: give the tokens back either way
            if admission is not None:
                self.limiter.settle(admission, 0)
            raise
        bill = Bill(tenant, model, admission, upstream, arrived, estimate_prompt_tokens(kind, body), arrived_at,
                    prompt_of(kind, body))
        sampled = self.sampler is not None and self.sampler.draw(model, tenant.quality_opt_out)
        if upstream.rest is not None:
            def on_end(status: int, seen: UsageFilter) -> None:
                # A stream that ended without its usage chunk (the client left, the replica broke) is billed
                # at the prompt estimate plus one token per content chunk relayed.
                self.finish(bill, status, seen.usage or {"prompt_tokens": bill.prompt_estimate,
                                                         "completion_tokens": seen.content_chunks})
                if sampled and status == 200 and seen.usage is not None and seen.texts is not None:
                    self.sample(bill, kind, body, None, "".join(seen.texts))

            return RelayStream(relay(upstream, client_wants_usage(body), on_end, collect_text=sampled),
                               media_type="text/event-stream", headers={"cache-control": "no-cache"})
        await upstream.close()
        answer = parse_json(upstream.content) if upstream.status == 200 else None
        usage = _usage_of(answer)
        if usage is None and upstream.status == 200:
            usage = {"prompt_tokens": bill.prompt_estimate, "completion_tokens": 0}
        self.finish(bill, upstream.status, usage)
        if sampled and answer is not None:
            self.sample(bill, kind, body, answer, None)
        return Response(upstream.content, status_code=upstream.status, media_type=upstream.media_type)

    def sample(self, bill: Bill, kind: str, body: dict[str, Any], answer: dict[str, Any] | None,
               text: str | None) -> None:
        """Hand a sampled, answered request to the quality worker (never blocks)."""
        assert self.sampler is not None
        self.sampler.offer(kind, body, answer, text, deployment=bill.deployment,
                           revision=bill.upstream.endpoint.revision, tenant_id=bill.tenant.tenant_id)

    def finish(self, bill: Bill, status: int, usage: dict[str, Any] | None) -> None:
        """Account for an answered request: metrics, the tenant's tpm bucket, its usage row."""
        prompt, completion = _tokens(usage)
        self.metrics.answered(bill.deployment, status, time.perf_counter() - bill.arrived)
        self.limiter.settle(bill.admission, prompt + completion)
        if prompt + completion == 0:
            return
        up = bill.upstream
        cost = self.pricing.request_cost(wall_s=time.perf_counter() - up.started,
                                         gpu=self.gpu_of(up.endpoint.replica_id), concurrent=up.concurrent)
        self.metrics.billed(bill.deployment, prompt, completion, cost)
        self.store.record_usage_later(bill.tenant.tenant_id, deployment=bill.deployment, prompt_tokens=prompt,
                                      completion_tokens=completion, cost_usd=cost, arrived_at=bill.arrived_at,
                                      prompt=bill.prompt)

    def model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "llmctl"}


def _usage_of(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    usage = answer.get("usage") if answer is not None else None
    return usage if isinstance(usage, dict) else None


def _tokens(usage: dict[str, Any] | None) -> tuple[int, int]:
    if not usage:
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0), (completion if isinstance(completion, int) else 0)


def build_gateway_app(*, routes: RouteTable, db_factory: Any, limiter: RateLimiter | None = None,
                      pricing: PriceTable | None = None, gpu_of: Callable[[int], str | None] | None = None,
                      client: httpx.AsyncClient | None = None, affinity_prefix_chars: int = 256,
                      load_margin: int = 4, metrics_registry: CollectorRegistry | None = None,
                      sampler: QualitySampler | None = None, hold: ColdStartHold | None = None) -> FastAPI:
    """The gateway app. Without `client` it makes its own for its lifespan (and closes it after)."""
    gw = Gateway(routes=routes, db_factory=db_factory, limiter=limiter or RateLimiter(),
                 pricing=pricing or PriceTable(), gpu_of=gpu_of or (lambda _replica_id: None), client=client,
                 affinity_prefix_chars=affinity_prefix_chars, load_margin=load_margin,
                 metrics_registry=metrics_registry, sampler=sampler, hold=hold)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = gw.client is None
        if owned:
            # Replicas are reached directly: no proxies from the environment; long generations may take
            # minutes between bytes only while queued, hence the generous read timeout.
            gw.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0), trust_env=False,
                                          limits=httpx.Limits(max_connections=1024, max_keepalive_connections=64))
        try:
            yield
        finally:
            await gw.store.drain()
            if owned:
                await gw.client.aclose()
                gw.client = None

    app = FastAPI(title="llmctl gateway", lifespan=lifespan)
    app.state.gateway = gw

    @app.exception_handler(ControlPlaneError)
    async def on_error(request: Request, exc: ControlPlaneError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.handle(request, "completion", "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gw.handle(request, "chat", "/v1/chat/completions")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        await gw.store.authenticate(request.headers.get("authorization"))
        return {"object": "list", "data": [gw.model_card(name) for name in routes.models()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        await gw.store.authenticate(request.headers.get("authorization"))
        if name not in routes.models():
            gw.router.check(name)  # the precise error: unknown model or none of its replicas ready
            raise ModelNotFound(f"The model '{name}' does not exist.")
        return gw.model_card(name)

    @app.get("/v1/usage")
    async def usage(request: Request, since: str | None = None, until: str | None = None) -> dict[str, Any]:
        tenant = await gw.store.authenticate(request.headers.get("authorization"))
        rows = await gw.store.usage_summary(tenant.tenant_id, since=since, until=until)
        return {"object": "list", "tenant": tenant.name, "data": rows}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": routes.models()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
