"""Prometheus metrics of the gateway, on a registry it owns (or one the caller passes in)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from llmctl.controlplane.gateway.routes import RouteTable

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


class GatewayMetrics:
    def __init__(self, routes: RouteTable, registry: CollectorRegistry | None = None) -> None:
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

    def answered(self, deployment: str, code: int, seconds: float) -> None:
        self.requests.labels(deployment, str(code)).inc()
        self.latency.labels(deployment).observe(max(0.0, seconds))

    def billed(self, deployment: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        self.prompt_tokens.labels(deployment).inc(prompt_tokens)
        self.completion_tokens.labels(deployment).inc(completion_tokens)
        self.cost.labels(deployment).inc(cost_usd)
