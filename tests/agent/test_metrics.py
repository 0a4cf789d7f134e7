"""The engine collector's speculative-decoding counters (vLLM's spec_decode_* names under llmctl_): exported,
one sample per draft position, only by an engine that speculates."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.agent.engine.engine import EngineStats
from llmctl.agent.metrics import ServerMetrics

IDLE = dict(num_running=0, num_waiting=0, num_kv_blocks=8, num_used_blocks=0, kv_usage=0.0, prefix_cache_queries=0,
            prefix_cache_hits=0, num_preemptions=0, num_prompt_tokens=10, num_generation_tokens=20,
            num_prefilled_tokens=10, kv_waste=0.0, peak_used_blocks=2, peak_kv_waste=0.0)


def samples(stats: EngineStats) -> dict[tuple[str, tuple], float]:
    text = generate_latest(ServerMetrics(lambda: stats, "m").registry).decode()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_speculating_engines_export_vllm_spec_decode_counters_per_position():
    stats = EngineStats(**IDLE, num_seq_forwards=12, spec_num_drafts=5, spec_num_draft_tokens=15,
                        spec_num_accepted_tokens=8, spec_accepted_per_pos=(5, 2, 1))
    got = samples(stats)
    assert got[("llmctl_spec_decode_num_drafts_total", ())] == 5
    assert got[("llmctl_spec_decode_num_draft_tokens_total", ())] == 15
    assert got[("llmctl_spec_decode_num_accepted_tokens_total", ())] == 8
    per_pos = {labels: v for (name, labels), v in got.items()
               if name == "llmctl_spec_decode_num_accepted_tokens_per_pos_total"}
    assert per_pos == {(("position", "0"),): 5, (("position", "1"),): 2, (("position", "2"),): 1}


def test_engines_that_do_not_speculate_export_no_spec_decode_series():
    got = samples(EngineStats(**IDLE))
    assert ("llmctl_generation_tokens_total", ()) in got
    assert not [name for name, _ in got if "spec_decode" in name]


def test_a_real_ngram_engine_exports_its_counters(tiny_llama):
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.engine.engine import LLMEngine
    from llmctl.agent.engine.sampling import SamplingParams

    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", speculative_method="ngram",
                                    num_speculative_tokens=2))
    engine.generate(["the cat sat on the mat, the cat sat on the mat, the cat"], SamplingParams(max_tokens=8))
    got = samples(engine.stats())
    per_pos = sorted(labels for name, labels in got if name == "llmctl_spec_decode_num_accepted_tokens_per_pos_total")
    assert per_pos == [(("position", "0"),), (("position", "1"),)]
    assert got[("llmctl_spec_decode_num_draft_tokens_total", ())] >= got[
        ("llmctl_spec_decode_num_accepted_tokens_total", ())]
