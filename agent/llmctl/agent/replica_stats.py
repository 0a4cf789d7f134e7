"""Engine statistics of one replica, read from its Prometheus /metrics (names from agent/metrics.py).

The result maps one to one onto the ReplicaStats proto fields; a metric the replica does not export is
None. Latency percentiles are estimated from the histogram buckets, cumulative since the replica started.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

STAT_FIELDS = (
    "running", "waiting", "kv_cache_usage", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tokens_per_s",
    "requests_total", "prompt_tokens_total", "generation_tokens_total",
)

# stat field -> (sample name, cast); samples with several label sets (per model, per reason) are summed.
_SUMS: dict[str, tuple[str, type]] = {
    "running": ("llmctl_num_requests_running", int),
    "waiting": ("llmctl_num_requests_waiting", int),
    "kv_cache_usage": ("llmctl_kv_cache_usage", float),
    "requests_total": ("llmctl_requests_finished_total", int),
    "prompt_tokens_total": ("llmctl_prompt_tokens_total", int),
    "generation_tokens_total": ("llmctl_generation_tokens_total", int),
}
# stat field -> (histogram name, quantile)
_QUANTILES: dict[str, tuple[str, float]] = {
    "ttft_p50_s": ("llmctl_time_to_first_token_seconds", 0.50),
    "ttft_p95_s": ("llmctl_time_to_first_token_seconds", 0.95),
    "tpot_p50_s": ("llmctl_time_per_output_token_seconds", 0.50),
}


class ReplicaUnreachable(Exception):
    """The replica did not answer /metrics (dead, hung, or not an llmctl engine server)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"replica at {url} is unreachable: {reason}")
        self.url = url
        self.reason = reason


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram [(upper bound, count <= bound)], interpolated linearly
    inside the bucket that holds it (Prometheus' method). None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                # Above the largest finite bucket nothing is known; report that bucket's bound.
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def parse_replica_metrics(text: str) -> dict[str, Any]:
    """ReplicaStats fields from a Prometheus text exposition (tokens_per_s needs two scrapes: None)."""
    sums: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                buckets[sample.name.removesuffix("_bucket")][float(sample.labels["le"])] += sample.value
            else:
                sums[sample.name] += sample.value
    stats: dict[str, Any] = dict.fromkeys(STAT_FIELDS)
    for name, (sample, cast) in _SUMS.items():
        if sample in sums:
            stats[name] = cast(sums[sample])
    for name, (histogram, q) in _QUANTILES.items():
        if histogram in buckets:
            stats[name] = histogram_quantile(list(buckets[histogram].items()), q)
    return stats


def scrape_replica_stats(url: str, *, timeout: float = 2.0, client: httpx.Client | None = None) -> dict[str, Any]:
    """GET <url>/metrics and parse it into ReplicaStats fields; ReplicaUnreachable when it cannot."""
    endpoint = url.rstrip("/") + "/metrics"
    try:
        if client is None:
            response = httpx.get(endpoint, timeout=timeout)
        else:
            response = client.get(endpoint, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ReplicaUnreachable(url, f"{type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise ReplicaUnreachable(url, f"GET /metrics returned HTTP {response.status_code}")
    try:
        return parse_replica_metrics(response.text)
    except ValueError as exc:
        raise ReplicaUnreachable(url, f"/metrics is not Prometheus text: {exc}") from exc


class ReplicaStatsScraper:
    """Scrapes replicas repeatedly and fills tokens_per_s from the generation counter between scrapes."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self._client = httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def scrape(self, url: str) -> dict[str, Any]:
        stats = scrape_replica_stats(url, timeout=self._timeout, client=self._client)
        now, tokens = time.monotonic(), stats["generation_tokens_total"]
        if tokens is None:
            return stats
        with self._lock:
            previous = self._last.get(url)
            self._last[url] = (now, tokens)
        # A counter that went down means the replica restarted: no rate until the next scrape.
        if previous is not None and now > previous[0] and tokens >= previous[1]:
            stats["tokens_per_s"] = (tokens - previous[1]) / (now - previous[0])
        return stats

    def forget(self, url: str) -> None:
        """Drop a stopped replica's history so a new replica on the same port starts fresh."""
        with self._lock:
            self._last.pop(url, None)

    def close(self) -> None:
        self._client.close()
