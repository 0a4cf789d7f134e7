"""BlockManager: allocation, refcounts, chained-hash prefix hits, LRU eviction (no tensors), and the
engine-level effect of prefix caching on SmolLM2 (only the uncached suffix is prefilled)."""

from __future__ import annotations

import pytest

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.kv_cache import BlockManager
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.sequence import Sequence

BS = 4


def make_seq(tokens, request_id: str = "r") -> Sequence:
    return Sequence(request_id, list(tokens), SamplingParams(max_tokens=4))


def compute(bm: BlockManager, seq: Sequence) -> Sequence:
    """Admit, allocate and 'compute' the whole sequence the way the engine does, publishing its blocks."""
    bm.admit(seq)
    n = seq.num_uncomputed_tokens
    assert bm.can_grow(seq, n)
    bm.grow(seq, n)
    seq.num_computed_tokens += n
    bm.cache_computed_blocks(seq)
    return seq


def refcounts(bm: BlockManager, seq: Sequence) -> list[int]:
    return [bm.blocks[b].ref_count for b in seq.block_table]


# -- allocation ---------------------------------------------------------------------------------
def test_grow_allocates_enough_blocks_and_release_returns_them():
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    seq = make_seq(range(10))
    bm.admit(seq)
    bm.grow(seq, 10)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert refcounts(bm, seq) == [1, 1, 1]
    assert (bm.num_used_blocks, bm.num_free_blocks, bm.usage) == (3, 5, 3 / 8)

    seq.num_computed_tokens = 10
    bm.grow(seq, 2)  # positions 10, 11 still fit the third block
    assert len(seq.block_table) == 3
    bm.grow(seq, 3)
    assert len(seq.block_table) == 4

    table = list(seq.block_table)
    bm.release(seq)
    assert seq.block_table == [] and seq.num_computed_tokens == 0
    assert all(bm.blocks[b].ref_count == 0 for b in table)
    assert (bm.num_used_blocks, bm.num_free_blocks, bm.usage) == (0, 8, 0.0)


def test_can_grow_refuses_more_blocks_than_are_free():
    bm = BlockManager(num_blocks=3, block_size=BS, enable_prefix_caching=False)
    a, b = make_seq(range(8), "a"), make_seq(range(100, 105), "b")
    bm.admit(a)
    bm.grow(a, 8)
    bm.admit(b)
    assert bm.can_grow(b, 4)
    assert not bm.can_grow(b, 5)
    assert bm.blocks_needed(9) == 3 and bm.blocks_needed(8) == 2


def test_shared_prefix_blocks_are_refcounted_and_freed_by_the_last_user():
    bm = BlockManager(num_blocks=8, block_size=BS)
    a = compute(bm, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "a"))
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 99, 98, 97], "b")
    bm.admit(b)
    assert b.block_table == a.block_table[:2]
    assert b.num_computed_tokens == b.num_cached_tokens == 8
    assert refcounts(bm, a) == [2, 2, 1]
    bm.grow(b, b.num_uncomputed_tokens)
    assert bm.num_used_blocks == 4

    bm.release(a)
    assert refcounts(bm, b) == [1, 1, 1]
    assert bm.num_used_blocks == 3
    bm.release(b)
    assert bm.num_used_blocks == 0


# -- prefix hits ----------------------------------------------------------------------------
def test_prefix_hit_needs_every_earlier_block_to_match():
    bm = BlockManager(num_blocks=16, block_size=BS)
    compute(bm, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "a"))

    # Blocks 2 and 3 equal a's, but the first differs: the chained hashes differ from there on.
    other_first = make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "b")
    bm.admit(other_first)
    assert other_first.block_table == [] and other_first.num_computed_tokens == 0

    other_second = make_seq([1, 2, 3, 4, 0, 6, 7, 8, 9, 10, 11, 12, 13], "c")
    bm.admit(other_second)
    assert other_second.num_computed_tokens == other_second.num_cached_tokens == 4


def test_last_block_is_never_a_hit_so_one_token_is_computed():
    bm = BlockManager(num_blocks=16, block_size=BS)
    a = compute(bm, make_seq(range(8), "a"))

    same = make_seq(range(8), "same")
    bm.admit(same)
    assert same.block_table == a.block_table[:1]
    assert same.num_computed_tokens == 4 and same.num_uncomputed_tokens == 4

    longer = make_seq(list(range(8)) + [50], "longer")
    bm.admit(longer)
    assert longer.block_table == a.block_table
    assert longer.num_computed_tokens == 8 and longer.num_uncomputed_tokens == 1


def test_partial_blocks_are_not_cached():
    bm = BlockManager(num_blocks=16, block_size=BS)
    compute(bm, make_seq(range(7), "a"))  # one full block, three tokens in the second
    b = make_seq(list(range(7)) + [70, 71, 72], "b")
    bm.admit(b)
    assert b.num_computed_tokens == 4


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    compute(bm, make_seq(range(12), "a"))
    b = make_seq(range(12), "b")
    bm.admit(b)
    assert b.block_table == [] and b.num_computed_tokens == 0


def test_hit_counters_count_prompt_tokens_per_admission():
    bm = BlockManager(num_blocks=16, block_size=BS)
    a = make_seq(range(10), "a")
    compute(bm, a)
    bm.count_admission(a)
    b = make_seq(range(10), "b")
    bm.admit(b)
    bm.count_admission(b)
    assert (bm.counters.queries, bm.counters.hits) == (20, 8)


# -- eviction -------------------------------------------------------------------------------
def test_eviction_takes_the_least_recently_released_cached_blocks_first():
    bm = BlockManager(num_blocks=4, block_size=BS)
    old = compute(bm, make_seq(range(0, 8), "old"))
    new = compute(bm, make_seq(range(100, 108), "new"))
    old_blocks = list(old.block_table)
    bm.release(old)
    bm.release(new)
    assert bm.num_used_blocks == 0  # cached but unreferenced blocks count as free

    fresh = make_seq(range(200, 208), "fresh")
    bm.admit(fresh)
    bm.grow(fresh, 8)
    assert sorted(fresh.block_table) == sorted(old_blocks)
    bm.release(fresh)

    # The evicted blocks are forgotten; the newer ones are still found.
    again_old = make_seq(list(range(0, 8)) + [1], "again-old")
    bm.admit(again_old)
    assert again_old.num_computed_tokens == 0
    again_new = make_seq(list(range(100, 108)) + [1], "again-new")
    bm.admit(again_new)
    assert again_new.num_computed_tokens == 8


def test_a_prefix_hit_refreshes_recency():
    bm = BlockManager(num_blocks=4, block_size=BS)
    first = compute(bm, make_seq(range(0, 8), "first"))
    second = compute(bm, make_seq(range(100, 108), "second"))
    bm.release(first)
    bm.release(second)
    reuse = make_seq(list(range(0, 8)) + [9], "reuse")  # hits both of first's blocks
    bm.admit(reuse)
    assert reuse.num_computed_tokens == 8
    bm.release(reuse)

    fresh = make_seq(range(200, 208), "fresh")
    bm.admit(fresh)
    bm.grow(fresh, 8)
    bm.release(fresh)
    probe = make_seq(list(range(0, 8)) + [9], "probe")
    bm.admit(probe)
    assert probe.num_computed_tokens == 8, "recently hit blocks were evicted before older ones"
    probe2 = make_seq(list(range(100, 108)) + [9], "probe2")
    bm.admit(probe2)
    assert probe2.num_computed_tokens == 0


def test_uncached_free_blocks_are_reused_before_cached_ones():
    bm = BlockManager(num_blocks=4, block_size=BS)
    cached = compute(bm, make_seq(range(8), "cached"))
    scratch = make_seq(range(50, 56), "scratch")
    bm.admit(scratch)
    bm.grow(scratch, 6)  # never computed, so never cached
    bm.release(cached)
    bm.release(scratch)

    fresh = make_seq(range(300, 306), "fresh")
    bm.admit(fresh)
    bm.grow(fresh, 6)
    bm.release(fresh)
    hit = make_seq(list(range(8)) + [1], "hit")
    bm.admit(hit)
    assert hit.num_computed_tokens == 8


# -- the engine with prefix caching ---------------------------------------------------------
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def engine_config(path, **overrides) -> EngineConfig:
    # One intra-op thread: the test box has 2 shared cores, and oversubscribed OpenMP threads make
    # every step about ten times slower.
    return EngineConfig(model=str(path), dtype="float32", num_threads=1, **overrides)


@pytest.fixture(scope="module")
def smollm2_engines(smollm2_path):
    return (
        LLMEngine(engine_config(smollm2_path, enable_prefix_caching=True)),
        LLMEngine(engine_config(smollm2_path, enable_prefix_caching=False)),
    )


def shared_prefix_prompts(tokenizer, prefix_len: int) -> tuple[list[int], list[int]]:
    text = " ".join(
        f"Rule {i}: always answer politely and cite the manual section {i * 7}." for i in range(60)
    )
    prefix = tokenizer.encode(text)[:prefix_len]
    assert len(prefix) == prefix_len
    # The suffixes differ from their first token on, so exactly prefix_len tokens are shared.
    first = prefix + tokenizer.encode(" Question: how do I reset my password?")
    second = prefix + tokenizer.encode(" Which cables does the router need, and where do they go?")
    return first, second


@pytest.mark.parametrize("prefix_len", [256, 250])
def test_second_request_with_a_shared_prefix_prefills_only_its_suffix(smollm2_engines, prefix_len):
    cached, uncached = smollm2_engines
    first, second = shared_prefix_prompts(cached.tokenizer, prefix_len)
    bs = cached.info.block_size
    cached.generate([first], GREEDY)

    before = cached.stats()
    out = cached.generate([second], GREEDY)[0]
    after = cached.stats()

    hit = prefix_len // bs * bs
    assert out.num_cached_tokens == hit
    assert after.num_prefilled_tokens - before.num_prefilled_tokens == len(second) - hit
    assert after.prefix_cache_hits - before.prefix_cache_hits == hit
    assert after.prefix_cache_queries - before.prefix_cache_queries == len(second)

    reference = uncached.generate([second], GREEDY)[0]
    assert reference.num_cached_tokens == 0
    assert out.output.token_ids == reference.output.token_ids
    assert out.output.text == reference.output.text
