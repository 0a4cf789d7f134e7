"""A recorded optimization run for the demo fleet: the report GetOptimization answers (report_json, parsed) at
each stage of one run, so tests and demos can watch the trail advance without a control plane.

`chat` (SmolLM2 with a KV pool too small for its workload, so it preempts) optimized for throughput with
`--techniques prefix-caching,max-num-seqs,kv-cache-size,awq`: prefix caching is skipped (already on), doubling
max_num_seqs gains nothing beyond noise, growing the KV pool is kept (+38%), 4-bit AWQ is rejected for quality
before any speed measurement, and revision 2 rolls out. Numbers as the optimizer writes them (runner.py,
judge.py); measurement results are left out (the dashboard does not show them).
"""

from __future__ import annotations

import math
from typing import Any

STAGES = 5
"""demo_optimization(stage) for stage in range(STAGES): 0 measures the baseline, 4 has finished."""

PRICE_PER_HOUR = 2.5
MIN_GAIN, MAX_DROP, REPEATS = 0.05, 0.02, 3
WORKLOAD = {"requests": 96, "input_len": [64, 512], "output_len": [64, 256], "shared_prefix_len": 0,
            "request_rate": "inf", "seed": 0}
BASE_CONFIG = {"model": "smollm2-135m", "quantization": None, "kv_cache_dtype": "auto", "max_num_seqs": 64,
               "block_size": 16, "num_kv_blocks": 512, "enable_prefix_caching": True}
KV_BYTES_PER_BLOCK = 16 * 46_080
"""SmolLM2-135M: 46,080 bytes of KV per token, 16 tokens a block."""
BOTTLENECK = {"name": "kv-memory", "why": "the baseline preempted 41 sequence(s): the KV pool is too small for "
                                          "the work the engine admits"}
REFERENCE = {"perplexity": 15.471, "kl_divergence": 0.0, "top1_agreement": 1.0, "accuracy": 0.567}
AWQ = {"perplexity": 17.664, "kl_divergence": 0.1223, "top1_agreement": 0.8111, "accuracy": 0.542}


def _metrics(tok_s: float, ttft: tuple[float, float], tpot: tuple[float, float], preemptions: float,
             blocks: int) -> dict[str, Any]:
    return {"throughput_tok_s": tok_s, "ttft_p50_ms": ttft[0], "ttft_p95_ms": ttft[1], "tpot_p50_ms": tpot[0],
            "tpot_p95_ms": tpot[1], "itl_p95_ms": round(tpot[1] * 1.5, 1), "preemptions": preemptions,
            "weights_bytes": 538_000_000, "linear_weight_bytes": 428_000_000,
            "kv_bytes": blocks * KV_BYTES_PER_BLOCK, "kv_blocks_total": blocks,
            "cost_per_1m_usd": round(PRICE_PER_HOUR / (tok_s * 3600) * 1e6, 4)}


BASELINE = _metrics(1482.6, (410.0, 1930.0), (21.4, 30.2), 41.0, 512)
MORE_SEQS = _metrics(1501.3, (405.2, 1911.4), (21.9, 31.0), 44.0, 512)
BIG_POOL = _metrics(2046.8, (262.1, 890.5), (23.8, 29.1), 0.0, 3072)


def _gain(estimate: float, low: float, high: float) -> dict[str, Any]:
    return {"metric": "throughput_tok_s", "estimate": estimate, "low": low, "high": high, "pairs": REPEATS,
            "higher_is_better": True, "confidence": 0.95}


def _awq_quality() -> dict[str, dict[str, float]]:
    """judge.quality_drops of the AWQ candidate against the reference revision."""
    drops = {"perplexity": AWQ["perplexity"] / REFERENCE["perplexity"] - 1,
             "kl_divergence": AWQ["kl_divergence"] / math.log(REFERENCE["perplexity"]),
             "top1_agreement": 1 - AWQ["top1_agreement"],
             "accuracy": (REFERENCE["accuracy"] - AWQ["accuracy"]) / REFERENCE["accuracy"]}
    return {key: {"candidate": AWQ[key], "reference": REFERENCE[key], "drop": round(drop, 6)}
            for key, drop in drops.items()}


def _awq_reason(quality: dict[str, dict[str, float]]) -> str:
    ppl, kl, top1, acc = (quality[k] for k in ("perplexity", "kl_divergence", "top1_agreement", "accuracy"))
    return "; ".join([
        f"quality: perplexity {ppl['drop']:+.2%} > 2% ({ppl['candidate']:.3f} vs {ppl['reference']:.3f})",
        f"quality: KL divergence {kl['candidate']:.4f} nats/token (drop {kl['drop']:.2%} of the reference's "
        f"{kl['candidate'] / kl['drop']:.3f} nats/token > 2%)",
        f"quality: top-1 agreement {top1['candidate']:.2%} (drop {top1['drop']:.2%} > 2%)",
        f"quality: accuracy {acc['candidate']:.3f} vs {acc['reference']:.3f} (drop {acc['drop']:.2%} > 2%)",
        "speed not measured (quality is checked first)"])


def _measurements(first_id: int, arms: str, done: int, replica: int) -> list[dict[str, Any]]:
    """Bench measurements in the order taken (arms "AAA" or "ABABABA"), the first `done` of them finished
    and the next one running."""
    rows = []
    for i, arm in enumerate(arms[: done + 1]):
        state = "done" if i < done else "running"
        rows.append({"id": first_id + i, "kind": "bench", "arm": arm, "repeat": i // 2 if len(arms) > REPEATS else i,
                     "state": state, "replica_id": replica + (arm == "B"), "wall_s": 14.2 if state == "done" else None,
                     "result": None, "error": None})
    return rows


def _step(number: int, technique: str, state: str, *, reason: str = "", change: dict[str, Any] | None = None,
          metrics: dict[str, Any] | None = None, baseline_metrics: dict[str, Any] | None = None,
          gain: dict[str, Any] | None = None, quality: dict[str, Any] | None = None,
          measurements: list[dict[str, Any]] | None = None, config: dict[str, Any] | None = None,
          started: float | None = None, finished: float | None = None) -> dict[str, Any]:
    return {"number": number, "technique": technique, "state": state, "reason": reason, "change": change or {},
            "engine_config": config if config is not None else {}, "metrics": metrics,
            "baseline_metrics": baseline_metrics, "gain": gain, "quality": quality, "started_at": started,
            "finished_at": finished, "measurements": measurements or []}


def demo_optimization(deployment: str, stage: int, *, created_at: float, run_id: int = 7) -> dict[str, Any]:
    """The run's report at `stage` (0 .. STAGES-1), started at `created_at` (the recorded clock)."""
    if not 0 <= stage < STAGES:
        raise ValueError(f"stage must be in 0..{STAGES - 1}, got {stage}")
    t = created_at
    bigger_pool = {**BASE_CONFIG, "num_kv_blocks": 3072}
    steps = [_step(0, "baseline", "running", config=BASE_CONFIG, started=t,
                   measurements=_measurements(101, "AAA", 1, 501))]
    summary = "baseline: measurement 2 of 3"
    if stage >= 1:
        steps = [_step(0, "baseline", "kept", reason="the starting point: revision 1", config=BASE_CONFIG,
                       metrics=BASELINE, started=t, finished=t + 52,
                       measurements=_measurements(101, "AAA", 3, 501)),
                 _step(1, "prefix-caching", "skipped", reason="prefix caching is already on", started=None,
                       finished=t + 52),
                 _step(2, "max-num-seqs", "running", change={"max_num_seqs": 128},
                       config={**BASE_CONFIG, "max_num_seqs": 128}, started=t + 52,
                       measurements=_measurements(104, "ABABABA", 3, 501)),
                 _step(3, "kv-cache-size", "pending"),
                 _step(4, "awq", "pending")]
        summary = "step 2 (max-num-seqs): measurement 4 of 7 (candidate)"
    if stage >= 2:
        steps[2] = _step(
            2, "max-num-seqs", "rejected", change={"max_num_seqs": 128}, config={**BASE_CONFIG, "max_num_seqs": 128},
            reason="no gain beyond noise: throughput +1.2% (95% interval -2.9% .. +5.3%); the lower bound must "
                   "exceed +5%",
            metrics=MORE_SEQS, baseline_metrics=BASELINE, gain=_gain(0.012, -0.029, 0.053), started=t + 52,
            finished=t + 170, measurements=_measurements(104, "ABABABA", 7, 501))
        steps[3] = _step(3, "kv-cache-size", "running", change={"num_kv_blocks": 3072, "kv_cache_memory": None},
                         config=bigger_pool, started=t + 170, measurements=_measurements(111, "ABABABA", 5, 503))
        summary = "step 3 (kv-cache-size): measurement 6 of 7 (candidate)"
    if stage >= 3:
        steps[3] = _step(
            3, "kv-cache-size", "kept", change={"num_kv_blocks": 3072, "kv_cache_memory": None}, config=bigger_pool,
            reason="throughput +38.4% (95% interval +31.1% .. +45.7%) beyond the 5% minimum; quality unchanged "
                   "(engine setting only)",
            metrics=BIG_POOL, baseline_metrics=BASELINE, gain=_gain(0.384, 0.311, 0.457), started=t + 170,
            finished=t + 281, measurements=_measurements(111, "ABABABA", 7, 503))
        steps[4] = _step(4, "awq", "running", change={"quantization": "awq", "kv_cache_memory": 2_418_000_000,
                                                      "num_kv_blocks": None},
                         config={**bigger_pool, "quantization": "awq"}, started=t + 281,
                         measurements=[{"id": 118, "kind": "eval", "arm": "", "repeat": 0, "state": "running",
                                        "replica_id": None, "wall_s": None, "result": None, "error": None}])
        summary = "step 4 (awq): quality eval against revision 1"
    finished_at = None
    if stage >= 4:
        quality = _awq_quality()
        steps[4] = {**steps[4], "state": "rejected", "reason": _awq_reason(quality), "quality": quality,
                    "metrics": {"linear_weight_bytes": 115_000_000, "kv_bytes_per_token": 46_080},
                    "finished_at": t + 340,
                    "measurements": [{**steps[4]["measurements"][0], "state": "done", "wall_s": 58.3}]}
        summary = "kept kv-cache-size; revision 2 is rolling out"
        finished_at = t + 341
    return {
        "id": run_id, "deployment": deployment, "state": "succeeded" if finished_at else "running",
        "goal": "throughput", "created_at": created_at, "finished_at": finished_at, "summary": summary,
        "error": None, "options": {
            "goal": "throughput", "max_quality_drop": MAX_DROP, "min_gain": MIN_GAIN, "slo_ttft_p95_ms": None,
            "slo_tpot_p95_ms": None, "techniques": ["prefix-caching", "max-num-seqs", "kv-cache-size", "awq"],
            "advisory": False, "budget_minutes": 60.0, "repeats": REPEATS, "workload": WORKLOAD,
            "eval_max_tokens": 2048, "eval_mc_limit": 60},
        "workload": WORKLOAD, "node": "gpu-node-00", "gpu": "NVIDIA H100 80GB HBM3", "price_per_hour": PRICE_PER_HOUR,
        "bottleneck": BOTTLENECK if stage >= 1 else None, "baseline_revision": 1,
        "result_revision": 2 if finished_at else None, "steps": steps,
    }
