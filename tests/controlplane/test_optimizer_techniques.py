"""The optimizer's bottleneck rules and technique catalog: which techniques a bottleneck plans, in order of
effort, and that every proposal is one valid EngineConfig change or says why it does not apply."""

from __future__ import annotations

import pytest

from llmctl.agent.engine.config import EngineConfig
from llmctl.controlplane.optimizer.options import DEFAULT_WORKLOAD
from llmctl.controlplane.optimizer.techniques import (
    BOTTLENECKS,
    TECHNIQUES,
    Context,
    find_bottleneck,
    plan_techniques,
    technique,
)

MIB = 2**20
STEADY = {"throughput_tok_s": 80.0, "ttft_p50_ms": 400.0, "ttft_p95_ms": 900.0, "tpot_p50_ms": 60.0,
          "tpot_p95_ms": 95.0, "itl_p95_ms": 120.0, "preemptions": 0.0, "weights_bytes": 538 * MIB,
          "kv_bytes": 64 * MIB}


def config(**changes) -> dict:
    return EngineConfig(model="x", **changes).to_dict()


def context(**changes) -> Context:
    base = {"workload": dict(DEFAULT_WORKLOAD), "kv_cache_bytes": 4 * MIB, "kv_blocks_total": 16,
            "linear_weight_bytes": 200 * MIB, "goal": "throughput", "bottleneck": "kv-memory"}
    return Context(**{**base, **changes})


def applied(name: str, cfg: dict, ctx: Context) -> EngineConfig:
    """The candidate a technique proposes, as the engine would validate it."""
    proposal = technique(name).propose(cfg, ctx)
    assert proposal.change, proposal.why_not
    assert proposal.why_not is None
    return EngineConfig.from_dict({**cfg, **proposal.change})


def test_memory_goal_names_the_larger_of_weights_and_kv():
    assert find_bottleneck("memory", STEADY).name == "weights-memory"
    kv = find_bottleneck("memory", {**STEADY, "kv_bytes": 1024 * MIB, "preemptions": 3.0})
    assert kv.name == "kv-memory" and "1024.0 MiB" in kv.why


def test_speed_goals_check_preemption_then_queueing_then_prefill_then_decode():
    preempting = find_bottleneck("throughput", {**STEADY, "preemptions": 41.0, "ttft_p95_ms": 9000.0})
    assert preempting.name == "kv-memory" and "preempted 41 sequence" in preempting.why
    queueing = find_bottleneck("latency", {**STEADY, "ttft_p95_ms": 2100.0})
    assert queueing.name == "queueing" and "2100 ms is 5.2x its p50 400 ms" in queueing.why
    prefill = find_bottleneck("cost", {**STEADY, "tpot_p95_ms": 50.0})
    assert prefill.name == "prefill" and "18.0x TPOT p95 50.0 ms" in prefill.why
    assert find_bottleneck("throughput", STEADY).name == "decode"


def test_missing_metrics_skip_their_rules():
    unknown = dict.fromkeys(STEADY)
    assert find_bottleneck("throughput", unknown).name == "decode"
    assert find_bottleneck("memory", unknown).name == "weights-memory"
    assert find_bottleneck("latency", {**unknown, "ttft_p50_ms": 10.0, "ttft_p95_ms": 100.0}).name == "queueing"


def test_the_catalog_is_in_the_articles_order_of_effort():
    assert [t.name for t in TECHNIQUES] == [
        "prefix-caching", "chunked-prefill", "max-num-seqs", "max-num-batched-tokens", "kv-cache-size",
        "kv-int8", "kv-fp8", "int8-weights", "awq", "speculative-decoding", "distilled-student"]
    assert [t.effort for t in TECHNIQUES] == sorted(t.effort for t in TECHNIQUES)
    assert all(t.addresses <= set(BOTTLENECKS) and t.what for t in TECHNIQUES)
    assert {t.name for t in TECHNIQUES if t.changes_numerics} == {
        "kv-int8", "kv-fp8", "int8-weights", "awq", "distilled-student"}


def test_each_bottleneck_plans_the_techniques_that_address_it_lowest_effort_first():
    plans = {b: [t.name for t in plan_techniques(b, None)] for b in BOTTLENECKS}
    assert plans["kv-memory"] == ["prefix-caching", "kv-cache-size", "kv-int8", "kv-fp8", "int8-weights", "awq"]
    assert plans["weights-memory"] == ["int8-weights", "awq", "distilled-student"]
    assert plans["prefill"] == ["prefix-caching", "chunked-prefill", "max-num-batched-tokens"]
    assert plans["queueing"] == ["prefix-caching", "chunked-prefill", "max-num-seqs", "max-num-batched-tokens",
                                 "kv-cache-size"]
    assert plans["decode"] == ["chunked-prefill", "max-num-seqs", "int8-weights", "awq", "speculative-decoding",
                               "distilled-student"]


def test_requested_techniques_are_exactly_those_sorted_by_effort_whatever_the_bottleneck():
    plan = plan_techniques("decode", ["awq", "kv-cache-size", "prefix-caching"])
    assert [t.name for t in plan] == ["prefix-caching", "kv-cache-size", "awq"]
    with pytest.raises(ValueError, match="unknown technique 'turbo'; known: prefix-caching, chunked-prefill"):
        plan_techniques("decode", ["awq", "turbo"])
    with pytest.raises(ValueError, match="requested more than once: awq"):
        plan_techniques("decode", ["awq", "kv-int8", "awq"])
    with pytest.raises(ValueError, match="unknown bottleneck"):
        plan_techniques("slowness", None)


def test_switches_apply_only_when_off():
    ctx = context()
    assert applied("prefix-caching", config(enable_prefix_caching=False), ctx).enable_prefix_caching
    assert applied("chunked-prefill", config(enable_chunked_prefill=False), ctx).enable_chunked_prefill
    assert technique("prefix-caching").propose(config(), ctx).why_not == "prefix caching is already on"
    assert technique("chunked-prefill").propose(config(), ctx).why_not == "chunked prefill is already on"


def test_batch_limits_double_up_to_their_caps_and_only_when_the_workload_needs_more():
    many = context(workload={**DEFAULT_WORKLOAD, "requests": 1000})
    assert applied("max-num-seqs", config(), many).max_num_seqs == 128
    assert applied("max-num-seqs", config(max_num_seqs=300), many).max_num_seqs == 512
    assert "already 512" in technique("max-num-seqs").propose(config(max_num_seqs=512), many).why_not
    # The default workload's 24 requests all fit in the default 64 sequences.
    assert "admits all 24 requests" in technique("max-num-seqs").propose(config(), context()).why_not

    assert applied("max-num-batched-tokens", config(), context()).max_num_batched_tokens == 4096
    assert applied("max-num-batched-tokens", config(max_num_batched_tokens=12000),
                   many).max_num_batched_tokens == 16384
    small = context(workload={**DEFAULT_WORKLOAD, "requests": 4})
    assert "in one step (4 x 128 tokens)" in technique("max-num-batched-tokens").propose(config(), small).why_not


def test_kv_cache_size_grows_the_pool_to_what_the_workload_holds_at_once():
    # 24 requests x ceil((128 + 96) / 16) = 24 x 14 blocks
    cand = applied("kv-cache-size", config(num_kv_blocks=16), context(kv_blocks_total=16))
    assert (cand.num_kv_blocks, cand.kv_cache_memory) == (336, None)
    from_memory = technique("kv-cache-size").propose(config(kv_cache_memory=4 * MIB), context(kv_blocks_total=16))
    assert from_memory.change == {"num_kv_blocks": 336, "kv_cache_memory": None}
    # At least double the current pool.
    assert applied("kv-cache-size", config(), context(kv_blocks_total=300)).num_kv_blocks == 600

    assert "already holds 336 blocks" in technique("kv-cache-size").propose(
        config(), context(kv_blocks_total=336)).why_not
    assert technique("kv-cache-size").propose(config(), context(goal="memory")).why_not == (
        "growing the KV pool does not save memory")


def test_kv_quantization_keeps_the_pool_bytes_so_more_tokens_fit():
    for name, dtype in (("kv-int8", "int8"), ("kv-fp8", "fp8")):
        cand = applied(name, config(num_kv_blocks=16), context())
        assert (cand.kv_cache_dtype, cand.kv_cache_memory, cand.num_kv_blocks) == (dtype, 4 * MIB, None)
        assert technique(name).propose(config(kv_cache_dtype="fp8"), context()).why_not == (
            "the KV cache is already fp8")
        unknown = technique(name).propose(config(), context(kv_cache_bytes=None))
        assert unknown.change is None and "unknown" in unknown.why_not
    # For the memory goal the same blocks take fewer bytes instead.
    saving = applied("kv-int8", config(kv_cache_memory=4 * MIB), context(goal="memory"))
    assert (saving.num_kv_blocks, saving.kv_cache_memory) == (16, None)


def test_weight_quantization_gives_the_freed_bytes_to_a_short_kv_pool():
    cand = applied("int8-weights", config(num_kv_blocks=16), context())
    assert cand.quantization == "int8" and cand.num_kv_blocks is None
    assert cand.kv_cache_memory == pytest.approx(4 * MIB + 0.5 * 200 * MIB, rel=0.02)
    awq = applied("awq", config(num_kv_blocks=16), context())
    assert awq.kv_cache_memory == pytest.approx(4 * MIB + 0.73 * 200 * MIB, rel=0.02)

    for bottleneck, goal in (("decode", "throughput"), ("weights-memory", "memory"), ("kv-memory", "memory")):
        only = technique("awq").propose(config(), context(bottleneck=bottleneck, goal=goal))
        assert only.change == {"quantization": "awq"}

    assert technique("int8-weights").propose(config(quantization="awq"), context()).why_not == (
        "the weights are already quantized (awq)")
    assert technique("awq").propose(config(quantization="rtn4"), context()).change is None
    assert applied("awq", config(quantization="int8"), context(bottleneck="decode")).quantization == "awq"


def test_speculative_decoding_proposes_prompt_lookup_once():
    assert technique("speculative-decoding").propose(config(), context()).change == {"speculative_method": "ngram"}
    assert technique("speculative-decoding").propose(config(speculative_method="ngram"), context()).why_not == (
        "the engine already speculates (ngram)")
    assert applied("speculative-decoding", config(), context()).speculative_method == "ngram"


def test_techniques_the_engine_lacks_never_apply():
    assert technique("distilled-student").propose(config(), context()).why_not == (
        "no distilled student is registered for this model")


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
@pytest.mark.parametrize("goal", ["throughput", "memory"])
def test_every_proposal_is_a_valid_engine_config_or_says_why_not(bottleneck, goal):
    cfg = config(enable_prefix_caching=False, enable_chunked_prefill=False, num_kv_blocks=16)
    ctx = context(bottleneck=bottleneck, goal=goal, workload={**DEFAULT_WORKLOAD, "requests": 100})
    for t in TECHNIQUES:
        proposal = t.propose(cfg, ctx)
        assert (proposal.change is None) == (proposal.why_not is not None), t.name
        if proposal.change is not None:
            assert set(proposal.change) <= set(cfg)
            EngineConfig.from_dict({**cfg, **proposal.change})


def test_an_unknown_technique_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: prefix-caching, .*distilled-student"):
        technique("magic")
