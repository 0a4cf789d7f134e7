"""Prometheus metrics of one served engine, on a registry owned by the app (never the global one).

Engine state (queue lengths, KV usage, cumulative token counts) is read from `stats()` at scrape time by a
collector, so it is exact and costs nothing per step. Per-request latencies are observed by the server
when a request ends, since only it knows when a client got its tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
                40.0, 80.0)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
               240.0)


class EngineStatsCollector:
    """Turns one `EngineStats` snapshot into gauges and (engine-cumulative) counters on every scrape.

    The speculative-decoding counters (vLLM's spec_decode_* names) are exported only by an engine that
    speculates (a non-empty spec_accepted_per_pos), as vLLM does, so their absence means speculation is off.
    """

    def __init__(self, stats: Callable[[], Any], model_name: str) -> None:
        self._stats = stats
        self._labels = {"model_name": model_name}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        metric = GaugeMetricFamily(name, doc, labels=list(self._labels))
        metric.add_metric(list(self._labels.values()), value)
        return metric

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        metric = CounterMetricFamily(name, doc, labels=list(self._labels))
        metric.add_metric(list(self._labels.values()), value)
        return metric

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        queries, hits = s.prefix_cache_queries, s.prefix_cache_hits
        yield self._gauge("llmctl_num_requests_running", "Requests in the running batch.", s.num_running)
        yield self._gauge("llmctl_num_requests_waiting", "Requests queued for admission.", s.num_waiting)
        yield self._gauge("llmctl_kv_cache_usage", "Fraction of KV blocks in use (0..1).", s.kv_usage)
        yield self._gauge("llmctl_kv_blocks_total", "Size of the KV block pool.", s.num_kv_blocks)
        yield self._gauge("llmctl_kv_blocks_used", "KV blocks held by requests.", s.num_used_blocks)
        yield self._gauge("llmctl_kv_cache_bytes_per_token", "KV cache bytes per token, all layers, scales included.",
                          s.kv_bytes_per_token)
        yield self._gauge("llmctl_kv_cache_bytes", "Bytes of the whole KV block pool, scales included.",
                          s.kv_cache_bytes)
        yield self._gauge("llmctl_model_linear_weight_bytes",
                          "Bytes of the decoder's linear weights (with quantization scales).", s.linear_weight_bytes)
        yield self._gauge("llmctl_model_bytes", "Bytes of every model parameter and buffer.", s.model_bytes)
        yield self._gauge(
            "llmctl_prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / prompt tokens looked up, since start.",
            hits / queries if queries else 0.0,
        )
        yield self._counter("llmctl_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                            queries)
        yield self._counter("llmctl_prefix_cache_hits", "Prompt tokens found in the prefix cache.", hits)
        yield self._counter("llmctl_prompt_tokens", "Prompt tokens of admitted requests.", s.num_prompt_tokens)
        yield self._counter("llmctl_generation_tokens", "Tokens generated.", s.num_generation_tokens)
        yield self._counter("llmctl_num_preemptions", "Sequences preempted for lack of KV blocks.",
                            s.num_preemptions)
        if s.spec_accepted_per_pos:
            yield from self._spec_decode(s)

    def _spec_decode(self, s: Any) -> Iterator[Metric]:
        yield self._counter("llmctl_spec_decode_num_drafts", "Sequence-steps that verified at least one drafted "
                            "token.", s.spec_num_drafts)
        yield self._counter("llmctl_spec_decode_num_draft_tokens", "Tokens drafted and verified.",
                            s.spec_num_draft_tokens)
        yield self._counter("llmctl_spec_decode_num_accepted_tokens", "Drafted tokens the target accepted.",
                            s.spec_num_accepted_tokens)
        per_pos = CounterMetricFamily(
            "llmctl_spec_decode_num_accepted_tokens_per_pos",
            "Drafted tokens accepted at each draft position (0: the first drafted token).",
            labels=[*self._labels, "position"],
        )
        for position, accepted in enumerate(s.spec_accepted_per_pos):
            per_pos.add_metric([*self._labels.values(), str(position)], accepted)
        yield per_pos


class ServerMetrics:
    """The metrics registry of one app: engine-state collector plus per-request histograms."""

    def __init__(self, stats: Callable[[], Any], model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineStatsCollector(stats, model_name))
        self._model = model_name
        self.ttft = Histogram(
            "llmctl_time_to_first_token_seconds", "Time from arrival to the first generated token.",
            ["model_name"], buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.tpot = Histogram(
            "llmctl_time_per_output_token_seconds", "Mean time between output tokens of one request.",
            ["model_name"], buckets=TPOT_BUCKETS, registry=self.registry,
        )
        self.e2e = Histogram(
            "llmctl_e2e_request_latency_seconds", "Time from arrival to the end of a request.",
            ["model_name"], buckets=E2E_BUCKETS, registry=self.registry,
        )
        self.finished = Counter(
            "llmctl_requests_finished", "Requests that ended, by finish reason (stop, length, abort).",
            ["model_name", "finished_reason"], registry=self.registry,
        )

    def observe_finished(
        self,
        reason: str,
        num_generated: int,
        arrival: float,
        first_token: float | None,
        finish: float,
    ) -> None:
        """Record one ended request; times are `time.monotonic()` seconds."""
        self.finished.labels(self._model, reason).inc()
        self.e2e.labels(self._model).observe(max(finish - arrival, 0.0))
        if first_token is not None:
            self.ttft.labels(self._model).observe(max(first_token - arrival, 0.0))
            if num_generated > 1:
                self.tpot.labels(self._model).observe(max(finish - first_token, 0.0) / (num_generated - 1))

    def count_aborted(self) -> None:
        """A request its client abandoned; no latencies, since it never completed for anyone."""
        self.finished.labels(self._model, "abort").inc()
