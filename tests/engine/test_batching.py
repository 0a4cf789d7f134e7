"""Greedy outputs do not depend on batching: a request alone equals the same request inside a batch
of 16 mixed-length ones, with chunked prefill, prefix caching and preemption on or off (float32).

The wide sweep runs on the tiny random Llama; one representative case runs on SmolLM2.
"""

from __future__ import annotations

import random

import pytest

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.sampling import SamplingParams

LENGTHS = [5, 300, 17, 64, 128, 33, 250, 9, 200, 48, 96, 150, 12, 280, 75, 40]
SHARED = {3: 1, 8: 1, 11: 1, 13: 6}
"""Request index -> index of the request whose leading tokens it repeats (a shared prefix)."""
SHARED_LEN = {1: 60, 6: 130}


def mixed_prompts(vocab: list[int], seed: int = 0) -> list[list[int]]:
    """16 prompts of LENGTHS tokens drawn from vocab; some start with another prompt's first tokens."""
    rng = random.Random(seed)
    base = [[rng.choice(vocab) for _ in range(n)] for n in LENGTHS]
    out = []
    for i, prompt in enumerate(base):
        if i in SHARED:
            src = SHARED[i]
            shared = SHARED_LEN[src]
            prompt = list(base[src][:shared]) + prompt[: LENGTHS[i] - shared]
        out.append(prompt)
    assert [len(p) for p in out] == LENGTHS
    return out


def config(path, **overrides) -> EngineConfig:
    # One intra-op thread: 2 shared cores, and oversubscribed OpenMP threads slow each step ~10x.
    return EngineConfig(model=str(path), dtype="float32", num_threads=1, **overrides)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def alone(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    return [engine.generate([p], params)[0].output.token_ids for p in prompts]


def batched(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    return [o.output.token_ids for o in engine.generate(prompts, params)]


# -- the sweep on the tiny random Llama ---------------------------------------------------------
TINY_MAX_TOKENS = 16
TINY_POOL = -(-(max(LENGTHS) + TINY_MAX_TOKENS) // 16) + 2
"""Room for the largest request plus two blocks: far too small for all 16 at once."""

SWEEP = {
    "chunked-64-caching": dict(enable_chunked_prefill=True, max_num_batched_tokens=64),
    "chunked-64-no-caching": dict(
        enable_chunked_prefill=True, max_num_batched_tokens=64, enable_prefix_caching=False
    ),
    "whole-prompts-caching": dict(enable_chunked_prefill=False, max_num_batched_tokens=512),
    "whole-prompts-no-caching": dict(
        enable_chunked_prefill=False, max_num_batched_tokens=512, enable_prefix_caching=False
    ),
    "chunked-4-seqs-block-8": dict(max_num_batched_tokens=100, max_num_seqs=4, block_size=8),
    "small-pool-chunked-caching": dict(max_num_batched_tokens=64, num_kv_blocks=TINY_POOL),
    "small-pool-whole-prompts": dict(
        enable_chunked_prefill=False,
        max_num_batched_tokens=512,
        num_kv_blocks=TINY_POOL,
        enable_prefix_caching=False,
    ),
}


@pytest.fixture(scope="module")
def tiny_prompts(tiny_llama) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    special = set(tok.all_special_ids)
    return mixed_prompts([i for i in range(len(tok)) if i not in special])


@pytest.fixture(scope="module")
def tiny_alone(tiny_llama, tiny_prompts) -> list[list[int]]:
    engine = LLMEngine(config(tiny_llama, enable_prefix_caching=False))
    return alone(engine, tiny_prompts, greedy(TINY_MAX_TOKENS))


@pytest.mark.parametrize("name", list(SWEEP))
def test_batched_greedy_output_equals_each_request_alone(tiny_llama, tiny_prompts, tiny_alone, name):
    overrides = SWEEP[name]
    engine = LLMEngine(config(tiny_llama, **overrides))
    assert batched(engine, tiny_prompts, greedy(TINY_MAX_TOKENS)) == tiny_alone
    stats = engine.stats()
    if "num_kv_blocks" in overrides:
        assert stats.num_preemptions > 0
    if engine.config.enable_prefix_caching:
        # A second round finds the first round's blocks: the outputs must not change.
        assert batched(engine, tiny_prompts, greedy(TINY_MAX_TOKENS)) == tiny_alone
        assert engine.stats().prefix_cache_hits > stats.prefix_cache_hits
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_used_blocks) == (0, 0, 0)


def test_requests_joining_a_running_batch_do_not_change_its_outputs(tiny_llama, tiny_prompts, tiny_alone):
    engine = LLMEngine(config(tiny_llama, max_num_batched_tokens=64))
    params = greedy(TINY_MAX_TOKENS)
    final = {}
    for i, prompt in enumerate(tiny_prompts):
        engine.add_request(str(i), prompt, params)
        for out in engine.step():  # one step between arrivals: mixed prefill chunks and decodes
            final[out.request_id] = out
    while engine.has_unfinished():
        for out in engine.step():
            final[out.request_id] = out
    assert [final[str(i)].output.token_ids for i in range(len(tiny_prompts))] == tiny_alone


def test_preempted_request_outgrowing_the_budget_without_chunked_prefill_keeps_its_output(tiny_llama):
    # Prompts fit the 32-token budget whole, but a request preempted after generating must be
    # recomputed with its outputs: more than 32 tokens, so that recomputation has to be split.
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (30, 28, 25, 32, 20, 31)]
    params = greedy(24)
    reference = alone(LLMEngine(config(tiny_llama, enable_prefix_caching=False)), prompts, params)
    engine = LLMEngine(
        config(
            tiny_llama,
            enable_chunked_prefill=False,
            max_num_batched_tokens=32,
            num_kv_blocks=6,
            enable_prefix_caching=False,
        )
    )
    assert batched(engine, prompts, params) == reference
    assert engine.stats().num_preemptions > 0


# -- one representative case on SmolLM2 ---------------------------------------------------------
SMOL_MAX_TOKENS = 8


@pytest.fixture(scope="module")
def smol_prompts(smollm2_path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    text = " ".join(
        f"Chapter {i}. The engineer checked gauge {i * 3}, wrote the reading in the log, and walked to the "
        f"{['north', 'south', 'east', 'west'][i % 4]} tower where the {i}th valve had been replaced last spring."
        for i in range(40)
    )
    ids = tok.encode(text)
    # Requests 9, 11, 13 and 15 start where 2, 4, 6 and 5 start: they share those prompts as prefixes.
    source = {9: 2, 11: 4, 13: 6, 15: 5}
    starts = [37 * source.get(i, i) for i in range(len(LENGTHS))]
    prompts = [ids[start : start + n] for start, n in zip(starts, LENGTHS, strict=True)]
    assert [len(p) for p in prompts] == LENGTHS
    return prompts


def test_smollm2_batch_with_chunking_caching_and_preemption_matches_each_request_alone(
    smollm2_path, smol_prompts
):
    params = greedy(SMOL_MAX_TOKENS)
    reference = alone(LLMEngine(config(smollm2_path, enable_prefix_caching=False)), smol_prompts, params)
    pool = -(-(max(LENGTHS) + SMOL_MAX_TOKENS) // 16) + 4
    engine = LLMEngine(config(smollm2_path, max_num_batched_tokens=64, num_kv_blocks=pool))
    assert batched(engine, smol_prompts, params) == reference
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert stats.num_used_blocks == 0


def test_requests_admitted_in_the_same_step_share_a_prefix_computed_in_that_step(tiny_llama):
    # Blocks are published when scheduled: every layer writes the step's K/V before attention reads,
    # so the second and third requests reuse the first one's prefix although none was computed yet.
    rng = random.Random(7)
    vocab = list(range(10, 300))
    prefix = [rng.choice(vocab) for _ in range(64)]
    prompts = [prefix + [rng.choice(vocab) for _ in range(n)] for n in (20, 9, 33)]
    cached = LLMEngine(config(tiny_llama, enable_prefix_caching=True))
    outs = cached.generate(prompts, greedy(12))
    assert [o.num_cached_tokens for o in outs] == [0, 64, 64]
    assert cached.stats().num_prefilled_tokens == sum(map(len, prompts)) - 2 * 64
    plain = LLMEngine(config(tiny_llama, enable_prefix_caching=False))
    assert [o.output.token_ids for o in outs] == batched(plain, prompts, greedy(12))
