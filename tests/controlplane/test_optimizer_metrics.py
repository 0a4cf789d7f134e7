"""The numbers a step is judged on, from bench results: cost per 1M tokens, means over repeats, the goal's metric."""

from __future__ import annotations

import pytest

from llmctl.controlplane.optimizer.metrics import bench_metrics, goal_metric, mean_metrics


def result(tok_s: float, server: dict | None = None) -> dict:
    dist = {"mean": 10.0, "p50": 9.0, "p95": 20.0, "p99": 25.0}
    run = {"output_tokens_per_s": tok_s, "ttft_ms": dist, "tpot_ms": dist, "itl_ms": dist}
    if server is not None:
        run["server"] = server
    return {"runs": [run]}


def test_cost_per_million_tokens_is_the_hourly_price_over_tokens_per_hour() -> None:
    metrics = bench_metrics(result(50.0, {"model_bytes": 100, "kv_cache_bytes": 20, "num_preemptions": 3}), 0.18)
    assert metrics["cost_per_1m_usd"] == pytest.approx(0.18 / (50.0 * 3600) * 1e6)  # $1.00
    assert metrics["memory_bytes"] == 120 and metrics["preemptions"] == 3 and metrics["ttft_p95_ms"] == 20.0


def test_a_server_that_reports_nothing_leaves_memory_and_preemptions_unknown() -> None:
    metrics = bench_metrics(result(50.0), None)
    assert metrics["memory_bytes"] is None and metrics["preemptions"] is None and metrics["cost_per_1m_usd"] is None


def test_means_over_repeats_skip_what_a_repeat_did_not_report() -> None:
    assert mean_metrics([{"a": 1.0, "b": None}, {"a": 3.0, "b": 4.0}]) == {"a": 2.0, "b": 4.0}


@pytest.mark.parametrize(("goal", "bottleneck", "expected"), [
    ("throughput", "kv-memory", ("throughput_tok_s", True)),
    ("cost", "decode", ("cost_per_1m_usd", False)),
    ("memory", "weights-memory", ("memory_bytes", False)),
    ("latency", "prefill", ("ttft_p95_ms", False)),
    ("latency", "queueing", ("ttft_p95_ms", False)),
    ("latency", "decode", ("tpot_p95_ms", False)),
])
def test_each_goal_is_judged_on_its_own_metric(goal: str, bottleneck: str, expected: tuple[str, bool]) -> None:
    assert goal_metric(goal, bottleneck) == expected
