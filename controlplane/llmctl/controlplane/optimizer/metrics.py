"""The numbers a step is judged on, from `llmctl bench --url` results: throughput, latency percentiles,
preemptions, weights and KV pool bytes, and cost per 1M output tokens at the node's GPU-hour price."""

from __future__ import annotations

import statistics
from typing import Any


def bench_metrics(result: dict[str, Any] | None, price_per_hour: float | None) -> dict[str, Any]:
    """One `llmctl bench --url` result -> the numbers the report and the judge use."""
    assert result is not None
    run = result["runs"][0]
    server = run.get("server") or {}
    tps = run["output_tokens_per_s"]
    weights, kv = server.get("model_bytes"), server.get("kv_cache_bytes")
    return {
        "throughput_tok_s": tps,
        "ttft_p50_ms": run["ttft_ms"]["p50"], "ttft_p95_ms": run["ttft_ms"]["p95"],
        "tpot_p50_ms": run["tpot_ms"]["p50"], "tpot_p95_ms": run["tpot_ms"]["p95"],
        "itl_p95_ms": run["itl_ms"]["p95"],
        "preemptions": server.get("num_preemptions"),
        "weights_bytes": weights, "linear_weight_bytes": server.get("linear_weight_bytes"),
        "kv_bytes": kv, "kv_blocks_total": server.get("kv_blocks_total"),
        "peak_kv_usage": server.get("peak_kv_usage"),
        "memory_bytes": weights + kv if weights is not None and kv is not None else None,
        "cost_per_1m_usd": (price_per_hour / (tps * 3600.0) * 1e6) if price_per_hour is not None and tps > 0
        else None,
    }


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {k for row in rows for k in row}
    out: dict[str, Any] = {}
    for key in sorted(keys):
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
        out[key] = statistics.fmean(values) if values else None
    return out


def goal_metric(goal: str, bottleneck: str) -> tuple[str, bool]:
    """(metric key, higher is better) that a goal is judged on."""
    if goal == "throughput":
        return "throughput_tok_s", True
    if goal == "cost":
        return "cost_per_1m_usd", False
    if goal == "memory":
        return "memory_bytes", False
    return ("ttft_p95_ms" if bottleneck in ("prefill", "queueing") else "tpot_p95_ms"), False
