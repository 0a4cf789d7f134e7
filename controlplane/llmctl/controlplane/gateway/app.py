"""The gateway's HTTP app: OpenAI-compatible routes in front of the ready replicas of every deployment.

Per request: authenticate the tenant's key, check the model is routable, admit it under the tenant's limits,
pick the deployment (a model route may send a simple request to a cheaper companion, see model_route.py),
answer it from the exact response cache when that holds it (response_cache.py) or, for a deployment with the
semantic cache on, from the answer to a reworded question (semantic_cache.py), else proxy it to a replica
(see proxy.py), relay the answer (keeping a copy when it is cacheable), then bill the usage the replica
reported and record the request's shape (arrival, token counts, shared prefix; see traffic.py) for the
optimizer. SQL runs in worker threads so the event loop never waits on the database; usage rows are written
after the answer, and /v1/usage waits for the caller's own pending rows so a tenant always reads its writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmctl.agent.http_guard import MAX_BODY_BYTES, BodyLimit
from llmctl.agent.openai_protocol import ChatCompletionRequest, CompletionRequest
from llmctl.agent.openai_schema import (
    ChatCompletion,
    Completion,
    ModelCard,
    ModelList,
    finish_openapi,
    responses,
)
from llmctl.controlplane.errors import ControlPlaneError, InvalidArgument
from llmctl.controlplane.gateway.billing import Bill, TenantStore
from llmctl.controlplane.gateway.cached_answer import CachedAnswer, StreamRecorder, from_body, from_events
from llmctl.controlplane.gateway.embedding import Embedder, shared_embedder
from llmctl.controlplane.gateway.holding import ColdStartHold
from llmctl.controlplane.gateway.metrics import NO_DEPLOYMENT, GatewayMetrics
from llmctl.controlplane.gateway.model_route import (
    Decision,
    ModelRouteTable,
    decide,
    open_routed,
    routed_body,
)
from llmctl.controlplane.gateway.pricing import PriceTable
from llmctl.controlplane.gateway.proxy import RelayStream, open_upstream, relay
from llmctl.controlplane.gateway.ratelimit import Admission, RateLimited, RateLimiter, TenantLimits
from llmctl.controlplane.gateway.response_cache import CachePlan, ResponseCache, ResponseCacheConfig, plan
from llmctl.controlplane.gateway.routes import RouteTable
from llmctl.controlplane.gateway.routing import ModelNotFound, Router, prompt_key
from llmctl.controlplane.gateway.sampling import QualitySampler, parse_json
from llmctl.controlplane.gateway.semantic_cache import (
    SemanticIndex,
    SemanticQuery,
    SemanticTable,
    semantic_query,
)
from llmctl.controlplane.gateway.semantic_guard import compatible
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
                 sampler: QualitySampler | None = None, hold: ColdStartHold | None = None,
                 response_cache: ResponseCacheConfig | None = None, model_routes: ModelRouteTable | None = None,
                 semantic: SemanticTable | None = None, embedder: Embedder | None = None):
        if affinity_prefix_chars < 1:
            raise InvalidArgument(f"affinity_prefix_chars must be >= 1, got {affinity_prefix_chars}")
        self.routes, self.limiter, self.pricing, self.gpu_of = routes, limiter, pricing, gpu_of
        self.router = Router(routes, load_margin=load_margin)
        self.traffic = PrefixTracker()
        self.store = TenantStore(db_factory, limiter, self.traffic)
        self.cache = ResponseCache(response_cache) if response_cache is not None else None
        # The semantic cache indexes the exact one's entries: without an exact cache there is none.
        self.semantic = semantic if self.cache is not None else None
        self.index = (SemanticIndex(ttl_s=self.cache.config.ttl_s, clock=self.cache.clock)
                      if self.semantic is not None and self.cache is not None else None)
        self.embedder = embedder
        self.metrics = GatewayMetrics(routes, metrics_registry, self.cache, self.index)
        self.affinity_prefix_chars = affinity_prefix_chars
        self.client = client
        self.sampler = sampler
        self.hold = hold
        self.model_routes = model_routes if model_routes is not None else ModelRouteTable()
        self.created = int(time.time())

    async def handle(self, request: Request, kind: str, path: str) -> Response:
        """Proxy one completion (kind "completion") or chat completion (kind "chat")."""
        arrived, arrived_at = time.perf_counter(), datetime.fromtimestamp(self.limiter.clock(), UTC)
        label, admission, cache, similar = NO_DEPLOYMENT, None, None, None
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
            # Model routing (model_route.py) picks the deployment first; the cache then works under it.
            route = decide(self.model_routes.get(model), kind, body, self.routes)
            target = route.target if route is not None else model
            sent = routed_body(body, target) if target != model else body
            cache = self.cache_plan(kind, sent, tenant, request.headers.get("cache-control"))
            if cache is not None and (hit := self.lookup(cache, target, stream)) is not None:
                self.count_route(route)
                return _routed(self.answer_from_cache(hit, tenant, target, admission, arrived, stream, body),
                               target, model)
            similar = await self.semantic_plan(kind, sent, tenant, cache, target)
            if similar is not None and (hit := self.semantic_lookup(similar, target, stream)) is not None:
                self.count_route(route)
                return _routed(self.answer_from_cache(hit, tenant, target, admission, arrived, stream, body,
                                                      "semantic-hit"), target, model)

            def open_one(name: str) -> Any:
                one = sent if name == target else body
                return open_upstream(
                    self.client, self.router, self.metrics, deployment=name, path=path, stream=stream,
                    key=prompt_key(kind, one, self.affinity_prefix_chars),
                    payload=upstream_body(one, raw if one is body else json.dumps(one).encode()),
                )

            upstream, route = await open_routed(route, model, open_one)
            self.count_route(route)
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
        served = upstream.endpoint.deployment  # the companion, when the request was routed to it
        bill = Bill(tenant, served, admission, upstream, arrived, estimate_prompt_tokens(kind, body), arrived_at,
                    prompt_of(kind, body))
        sampled = self.sampler is not None and self.sampler.draw(served, tenant.quality_opt_out)
        headers = {"x-llmctl-cache": cache.header} if cache is not None else {}
        if served != model:
            headers["x-llmctl-routed-to"] = served
        if served != target:
            cache = None  # a fallback's answer is not kept under the companion's key
        if upstream.rest is not None:
            recorder = None
            if cache is not None and cache.store and upstream.status == 200:
                assert self.cache is not None
                upstream.rest = recorder = StreamRecorder(upstream.first, upstream.rest,
                                                          self.cache.config.max_entry_bytes)

            def on_end(status: int, seen: UsageFilter) -> None:
                # A stream that ended without its usage chunk (the client left, the replica broke) is billed
                # at the prompt estimate plus one token per content chunk relayed.
                self.finish(bill, status, seen.usage or {"prompt_tokens": bill.prompt_estimate,
                                                         "completion_tokens": seen.content_chunks})
                if sampled and status == 200 and seen.usage is not None and seen.texts is not None:
                    self.sample(bill, kind, body, None, "".join(seen.texts))
                if recorder is not None and status == 200 and (raw := recorder.recorded()) is not None:
                    self.keep(cache, served, upstream.endpoint.revision, from_events(kind, raw), similar)

            return RelayStream(relay(upstream, client_wants_usage(body), on_end, collect_text=sampled),
                               media_type="text/event-stream", headers={"cache-control": "no-cache", **headers})
        await upstream.close()
        answer = parse_json(upstream.content) if upstream.status == 200 else None
        usage = _usage_of(answer)
        if usage is None and upstream.status == 200:
            usage = {"prompt_tokens": bill.prompt_estimate, "completion_tokens": 0}
        self.finish(bill, upstream.status, usage)
        if sampled and answer is not None:
            self.sample(bill, kind, body, answer, None)
        if cache is not None and cache.store and answer is not None:
            self.keep(cache, served, upstream.endpoint.revision, from_body(kind, upstream.content), similar)
        return Response(upstream.content, status_code=upstream.status, media_type=upstream.media_type,
                        headers=headers)

    def cache_plan(self, kind: str, body: dict[str, Any], tenant: TenantLimits,
                   cache_control: str | None) -> CachePlan | None:
        """What the exact cache does with this request (None: the gateway has no cache)."""
        if self.cache is None:
            return None
        decision = plan(kind, body, tenant_id=tenant.tenant_id, cache_sampled=tenant.cache_sampled,
                        cache_control=cache_control)
        if decision.bypass_reason is not None:
            self.metrics.cache_bypass.labels(body["model"], decision.bypass_reason).inc()
        return decision

    def count_route(self, route: Decision | None) -> None:
        """Count where a routed deployment's request was served (a cache hit counts where it was looked up)."""
        if route is None:
            return
        self.metrics.route_decisions.labels(route.route.deployment, route.route.rule.kind, route.outcome).inc()
        if route.reason:
            self.metrics.route_fallbacks.labels(route.route.deployment, route.reason).inc()

    def lookup(self, cache: CachePlan, model: str, stream: bool) -> CachedAnswer | None:
        """The stored answer in the shape the client asked for, from a revision the deployment serves now."""
        if not cache.lookup:
            return None
        assert self.cache is not None and cache.key is not None
        hit = self.cache.get(cache.key, model, self.revisions(model))
        if hit is None or hit.shape(stream) is None:
            self.metrics.cache_misses.labels(model).inc()
            return None
        self.metrics.cache_hits.labels(model).inc()
        return hit

    async def semantic_plan(self, kind: str, body: dict[str, Any], tenant: TenantLimits, cache: CachePlan | None,
                            model: str) -> _Similar | None:
        """The embedded last user message of a request the semantic cache may answer or index (None: the
        deployment has it off, or the exact cache would not store this request)."""
        if self.semantic is None or cache is None or not cache.store:
            return None
        threshold = self.semantic.threshold(model)
        query = semantic_query(kind, body, tenant.tenant_id) if threshold is not None else None
        if threshold is None or query is None:
            return None
        embedder = self.embedder = self.embedder or shared_embedder()
        began = time.perf_counter()
        vector = (await asyncio.to_thread(embedder.embed, [query.text]))[0]  # never on the event loop
        self.metrics.semantic_embed_seconds.labels(model).observe(time.perf_counter() - began)
        return _Similar(query, vector, threshold, cache.lookup)

    def semantic_lookup(self, similar: _Similar, model: str, stream: bool) -> CachedAnswer | None:
        """The stored answer of the most similar question of the same scope, in the shape asked for."""
        if not similar.lookup:
            return None
        assert self.cache is not None and self.index is not None
        revisions = self.revisions(model)
        scope = similar.query.scope
        for neighbour in self.index.nearest(scope, similar.vector, similar.threshold, model, revisions):
            if not compatible(similar.query.text, neighbour.text):  # similar, but asks something else
                self.metrics.semantic_rejected.labels(model).inc()
                continue
            hit = self.cache.get(neighbour.key, model, revisions)
            if hit is None:  # the exact cache let it go first (size, age)
                self.index.forget(scope, neighbour)
            elif hit.shape(stream) is not None:
                self.index.touch(scope, neighbour)
                self.metrics.semantic_hits.labels(model).inc()
                return hit
        self.metrics.semantic_misses.labels(model).inc()
        return None

    def keep(self, cache: CachePlan, model: str, revision: int, answer: CachedAnswer | None,
             similar: _Similar | None = None) -> None:
        """Store a replica's complete 200 answer (answer None: it was not one), and index its question when
        the deployment has the semantic cache on."""
        if answer is not None:
            assert self.cache is not None and cache.key is not None
            revisions = self.revisions(model)
            if self.cache.put(cache.key, model, revision, answer, revisions) and similar is not None:
                assert self.index is not None
                self.index.add(similar.query.scope, cache.key, revision, model, similar.vector, similar.query.text,
                               revisions)

    def revisions(self, model: str) -> set[int]:
        return {ep.revision for ep in self.routes.endpoints(model)}

    def answer_from_cache(self, hit: CachedAnswer, tenant: TenantLimits, model: str, admission: Admission,
                          arrived: float, stream: bool, body: dict[str, Any], state: str = "hit") -> Response:
        """A hit: nothing was computed, so the tenant's tpm bucket gets its charge back and the usage row has
        no tokens and no cost; it still counts as a request (rpm, /v1/usage's request count)."""
        self.limiter.settle(admission, 0)
        self.metrics.answered(model, 200, time.perf_counter() - arrived)
        served = self.metrics.cache_served_tokens if state == "hit" else self.metrics.semantic_served_tokens
        served.labels(model).inc(hit.completion_tokens)
        self.store.record_usage_later(tenant.tenant_id, deployment=model, prompt_tokens=0, completion_tokens=0,
                                      cost_usd=0.0)
        if not stream:
            return Response(hit.body, media_type="application/json", headers={"x-llmctl-cache": state})
        seen = UsageFilter(client_wants_usage(body))
        assert hit.events is not None
        return Response(seen.feed(hit.events) + seen.flush(), media_type="text/event-stream",
                        headers={"cache-control": "no-cache", "x-llmctl-cache": state})

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


@dataclass(frozen=True)
class _Similar:
    """A request's embedded question: for a semantic lookup (when `lookup`) and to index its answer."""

    query: SemanticQuery
    vector: Any  # torch.Tensor [384], unit length
    threshold: float
    lookup: bool


class UsageReport(BaseModel):
    """/v1/usage: the caller's usage rows (documentation only)."""

    object: Literal["list"]
    tenant: str
    data: list[dict[str, Any]]


def _routed(response: Response, served: str, asked: str) -> Response:
    """Say so when a model route sent the request to the companion (x-llmctl-routed-to)."""
    if served != asked:
        response.headers["x-llmctl-routed-to"] = served
    return response


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
                      sampler: QualitySampler | None = None, hold: ColdStartHold | None = None,
                      max_body_bytes: int = MAX_BODY_BYTES,
                      response_cache: ResponseCacheConfig | None = None,
                      model_routes: ModelRouteTable | None = None, semantic: SemanticTable | None = None,
                      embedder: Embedder | None = None) -> FastAPI:
    """The gateway app. Without `client` it makes its own for its lifespan (and closes it after). A request
    body over max_body_bytes is a 413. With response_cache, repeated requests are answered from the exact
    cache (response_cache.py); with `semantic` too, reworded questions to the deployments it lists are
    answered from that cache (semantic_cache.py; `embedder` defaults to the process's shared model). model_routes: each deployment's companion route (model_route.py)."""
    gw = Gateway(routes=routes, db_factory=db_factory, limiter=limiter or RateLimiter(),
                 pricing=pricing or PriceTable(), gpu_of=gpu_of or (lambda _replica_id: None), client=client,
                 affinity_prefix_chars=affinity_prefix_chars, load_margin=load_margin,
                 metrics_registry=metrics_registry, sampler=sampler, hold=hold, response_cache=response_cache,
                 model_routes=model_routes, semantic=semantic, embedder=embedder)

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
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # The gateway reads generation bodies raw (it relays them), so its OpenAPI borrows the server's models:
    # the replica behind it validates them, and its 400s pass through.
    finish_openapi(app, {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest})
    app.state.gateway = gw

    @app.exception_handler(ControlPlaneError)
    async def on_error(request: Request, exc: ControlPlaneError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        # Keep the exception's headers: a 405 must say which methods the route allows (RFC 9110).
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    generation = (400, 401, 404, 408, 413, 429, 503)

    @app.post("/v1/completions", responses=responses(Completion, *generation, stream=True))
    async def completions(request: Request) -> Response:
        return await gw.handle(request, "completion", "/v1/completions")

    @app.post("/v1/chat/completions", responses=responses(ChatCompletion, *generation, stream=True))
    async def chat_completions(request: Request) -> Response:
        return await gw.handle(request, "chat", "/v1/chat/completions")

    @app.get("/v1/models", response_model=None, responses=responses(ModelList, 401))
    async def list_models(request: Request) -> dict[str, Any]:
        await gw.store.authenticate(request.headers.get("authorization"))
        return {"object": "list", "data": [gw.model_card(name) for name in routes.models()]}

    @app.get("/v1/models/{name:path}", response_model=None, responses=responses(ModelCard, 401, 404, 503))
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        await gw.store.authenticate(request.headers.get("authorization"))
        if name not in routes.models():
            gw.router.check(name)  # the precise error: unknown model or none of its replicas ready
            raise ModelNotFound(f"The model '{name}' does not exist.")
        return gw.model_card(name)

    @app.get("/v1/usage", response_model=None, responses=responses(UsageReport, 400, 401))
    async def usage(request: Request, since: str | None = None, until: str | None = None) -> dict[str, Any]:
        tenant = await gw.store.authenticate(request.headers.get("authorization"))
        rows = await gw.store.usage_summary(tenant.tenant_id, since=since, until=until)
        return {"object": "list", "tenant": tenant.name, "data": rows}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": routes.models()}

    @app.get("/metrics", response_class=Response, responses=responses(None, media_type=CONTENT_TYPE_LATEST))
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
