"""What an llmctl server's Prometheus /metrics says about one `llmctl bench --url` run: preemptions during the
run, weight and KV memory, and the peak KV usage seen while polling.

Servers that are not llmctl (vLLM, a proxy without /metrics) report only the keys they export, usually none;
a scrape that fails is skipped, never an error, since the bench measures the server either way.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

POLL_S = 0.5
FIRST_POLL_S = 0.1

# "server" key -> sample name (agent/metrics.py); the values are the same at every scrape.
_SIZES = {
    "model_bytes": "llmctl_model_bytes",
    "linear_weight_bytes": "llmctl_model_linear_weight_bytes",
    "kv_cache_bytes": "llmctl_kv_cache_bytes",
    "kv_blocks_total": "llmctl_kv_blocks_total",
}
PREEMPTIONS = "llmctl_num_preemptions_total"
KV_USAGE = "llmctl_kv_cache_usage"


def metric_sums(text: str) -> dict[str, float]:
    """Sample name -> value, summed over label sets (one model per server, so usually one each)."""
    sums: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] += sample.value
    return dict(sums)


class ServerWatch:
    """Scrapes <url>/metrics before a run, every POLL_S during it and after it."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._endpoint = url.rstrip("/") + "/metrics"
        self._scrapes: list[dict[str, float]] = []
        self._task: asyncio.Task | None = None

    async def scrape(self) -> None:
        try:
            response = await self._client.get(self._endpoint, timeout=2.0)
            if response.status_code == 200:
                self._scrapes.append(metric_sums(response.text))
        except (httpx.HTTPError, ValueError):
            pass  # unreachable, or not Prometheus text: this scrape tells nothing

    async def start(self) -> None:
        await self.scrape()

        async def poll() -> None:
            # The first look soon after the start, so a short run is seen busy at least once.
            await asyncio.sleep(FIRST_POLL_S)
            while True:
                await self.scrape()
                await asyncio.sleep(POLL_S)

        self._task = asyncio.create_task(poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.scrape()

    def summary(self) -> dict[str, Any]:
        """The run's "server" object: only the keys the server exported."""
        if not self._scrapes:
            return {}
        first, last = self._scrapes[0], self._scrapes[-1]
        out: dict[str, Any] = {}
        if PREEMPTIONS in first and PREEMPTIONS in last and len(self._scrapes) > 1:
            out["num_preemptions"] = int(last[PREEMPTIONS] - first[PREEMPTIONS])
        for key, name in _SIZES.items():
            if name in last:
                out[key] = int(last[name])
        usage = [s[KV_USAGE] for s in self._scrapes if KV_USAGE in s]
        if usage:
            out["peak_kv_usage"] = max(usage)
        return out
