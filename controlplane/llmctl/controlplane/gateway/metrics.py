"""Prometheus metrics of the gateway, on a registry it owns (or one the caller passes in)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from llmctl.controlplane.gateway.response_cache import ResponseCache
from llmctl.controlplane.gateway.routes import RouteTable
from llmctl.controlplane.gateway.semantic_cache import SemanticIndex

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
NO_DEPLOYMENT = "-"
"""Label of requests refused before they named a known deployment (bad key, unknown model), so clients
cannot grow the label set by sending made-up model names."""


class _OutstandingCollector:
    """In-flight requests per ready replica, read from the route table at scrape time."""

    def __init__(self, routes: RouteTable) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("llmctl_gateway_outstanding_requests",
                                  "Requests the gateway has in flight to each ready replica.",
                                  labels=["deployment", "replica_id"])
        for deployment in self._routes.deployments():
            for ep in self._routes.endpoints(deployment):
                gauge.add_metric([deployment, str(ep.replica_id)], self._routes.outstanding(ep.replica_id))
        yield gauge


class _CacheCollector:
    """The exact cache's size per deployment and its evictions, read from the cache at scrape time."""

    def __init__(self, routes: RouteTable, cache: ResponseCache) -> None:
        self._routes, self._cache = routes, cache

    def collect(self) -> Iterator[Metric]:
        stats = self._cache.stats()
        size = GaugeMetricFamily("llmctl_gateway_cache_bytes", "Bytes held by the exact response cache.",
                                 labels=["deployment"])
        entries = GaugeMetricFamily("llmctl_gateway_cache_entries", "Answers held by the exact response cache.",
                                    labels=["deployment"])
        for deployment in sorted(set(self._routes.deployments()) | set(stats)):
            count, held = stats.get(deployment, (0, 0))
            size.add_metric([deployment], held)
            entries.add_metric([deployment], count)
        evicted = CounterMetricFamily("llmctl_gateway_cache_evictions",
                                      "Answers dropped from the exact cache, by reason (ttl, size, revision).",
                                      labels=["deployment", "reason"])
        for (deployment, reason), count in sorted(self._cache.evictions().items()):
            evicted.add_metric([deployment, reason], count)
        yield from (size, entries, evicted)


class _SemanticCollector:
    """Questions the semantic cache has indexed per deployment, read at scrape time."""

    def __init__(self, index: SemanticIndex) -> None:
        self._index = index

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("llmctl_gateway_semantic_cache_entries",
                                  "Questions indexed by the semantic cache (each points at an exact-cache answer).",
                                  labels=["deployment"])
        for deployment, count in sorted(self._index.counts().items()):
            gauge.add_metric([deployment], count)
        yield gauge


class GatewayMetrics:
    def __init__(self, routes: RouteTable, registry: CollectorRegistry | None = None,
                 cache: ResponseCache | None = None, semantic: SemanticIndex | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.registry.register(_OutstandingCollector(routes))
        reg = self.registry
        self.requests = Counter("llmctl_gateway_requests", "Requests answered, by deployment and HTTP status.",
                                ["deployment", "code"], registry=reg)
        self.latency = Histogram("llmctl_gateway_request_duration_seconds",
                                 "Time from arrival to the end of the response (the last byte of a stream).",
                                 ["deployment"], buckets=LATENCY_BUCKETS, registry=reg)
        self.prompt_tokens = Counter("llmctl_gateway_prompt_tokens", "Prompt tokens billed.", ["deployment"],
                                     registry=reg)
        self.completion_tokens = Counter("llmctl_gateway_completion_tokens", "Completion tokens billed.",
                                         ["deployment"], registry=reg)
        self.cost = Counter("llmctl_gateway_cost_usd", "GPU cost billed to tenants, in dollars.", ["deployment"],
                            registry=reg)
        self.rate_limited = Counter("llmctl_gateway_rate_limited",
                                    "Requests refused by a tenant limit (rpm, tpm or monthly_tokens).",
                                    ["limit"], registry=reg)
        self.upstream_failures = Counter(
            "llmctl_gateway_upstream_failures",
            "Attempts a replica failed before its first byte (the request then moves to another replica).",
            ["deployment"], registry=reg,
        )
        self.cache_hits = Counter("llmctl_gateway_cache_hits", "Requests answered from the exact response cache.",
                                  ["deployment"], registry=reg)
        self.cache_misses = Counter("llmctl_gateway_cache_misses",
                                    "Cacheable requests not found in the exact cache (sent to a replica).",
                                    ["deployment"], registry=reg)
        self.cache_bypass = Counter(
            "llmctl_gateway_cache_bypass",
            "Requests that skipped the exact cache lookup, by reason (no_cache, no_store, sampled, malformed).",
            ["deployment", "reason"], registry=reg,
        )
        self.cache_served_tokens = Counter("llmctl_gateway_cache_served_tokens",
                                           "Completion tokens answered from the exact cache (not computed).",
                                           ["deployment"], registry=reg)
        self.route_decisions = Counter(
            "llmctl_gateway_route_decisions",
            "Requests of a deployment with a model route, by rule and where they were served: companion, main "
            "(the rule did not match) or fallback (it matched, but the companion could not serve).",
            ["deployment", "rule", "decision"], registry=reg,
        )
        self.route_fallbacks = Counter(
            "llmctl_gateway_route_fallbacks",
            "Matched requests the main deployment served instead of the companion, by reason (no_ready_replica, "
            "saturated, companion_failed).", ["deployment", "reason"], registry=reg,
        )
        # Semantic hits are their own series: llmctl_gateway_cache_hits counts exact hits only, and a request
        # the semantic cache answers was first an exact miss.
        self.semantic_hits = Counter("llmctl_gateway_semantic_cache_hits",
                                     "Requests answered from the semantic cache (a stored answer to a reworded "
                                     "question).", ["deployment"], registry=reg)
        self.semantic_misses = Counter("llmctl_gateway_semantic_cache_misses",
                                       "Semantic lookups with no stored question similar enough (sent to a replica).",
                                       ["deployment"], registry=reg)
        self.semantic_rejected = Counter("llmctl_gateway_semantic_cache_guard_rejections",
                                         "Stored questions similar enough but refused by the word-level guard "
                                         "(other numbers, a negation, an opposite, swapped arguments).",
                                         ["deployment"], registry=reg)
        self.semantic_served_tokens = Counter("llmctl_gateway_semantic_cache_served_tokens",
                                              "Completion tokens answered from the semantic cache (not computed).",
                                              ["deployment"], registry=reg)
        self.semantic_embed_seconds = Histogram("llmctl_gateway_semantic_embed_seconds",
                                                "Time to embed a request's last user message (worker thread).",
                                                ["deployment"], buckets=LATENCY_BUCKETS, registry=reg)
        if cache is not None:
            reg.register(_CacheCollector(routes, cache))
        if semantic is not None:
            reg.register(_SemanticCollector(semantic))

    def answered(self, deployment: str, code: int, seconds: float) -> None:
        self.requests.labels(deployment, str(code)).inc()
        self.latency.labels(deployment).observe(max(0.0, seconds))

    def billed(self, deployment: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        self.prompt_tokens.labels(deployment).inc(prompt_tokens)
        self.completion_tokens.labels(deployment).inc(completion_tokens)
        self.cost.labels(deployment).inc(cost_usd)
