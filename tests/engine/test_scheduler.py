"""Scheduler: continuous batching, limits, chunked prefill and preemption, driven with plain Sequences.

`advance` plays the engine's update: computed tokens move forward, a sequence that reaches its end
samples one token, and it finishes after max_tokens of them.
"""

from __future__ import annotations

from llmctl.agent.engine.kv_cache import BlockManager
from llmctl.agent.engine.sampling import SamplingParams
from llmctl.agent.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from llmctl.agent.engine.sequence import Sequence, SequenceStatus

BS = 4


def make_scheduler(
    num_blocks: int = 64,
    max_num_seqs: int = 8,
    max_tokens: int = 64,
    chunked: bool = True,
    caching: bool = False,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs, max_tokens, chunked), BlockManager(num_blocks, BS, caching)
    )


def make_seq(request_id: str, num_prompt: int, max_tokens: int = 4, first: int = 0) -> Sequence:
    return Sequence(request_id, list(range(first, first + num_prompt)), SamplingParams(max_tokens=max_tokens))


def advance(sched: Scheduler, batch: ScheduledBatch) -> list[Sequence]:
    """Apply one step's results; returns the sequences that finished."""
    finished = []
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        sched.blocks.cache_computed_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.output_token_ids.append(1000 + len(seq.output_token_ids))
            if len(seq.output_token_ids) >= seq.params.max_tokens:
                sched.finish(seq)
                finished.append(seq)
    return finished


def plan(batch: ScheduledBatch) -> list[tuple[str, int]]:
    return [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)]


def run_to_completion(sched: Scheduler, max_steps: int = 500) -> list[Sequence]:
    finished = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return finished
        batch = sched.schedule()
        assert not batch.is_empty, (
            f"no progress: waiting {[(s.request_id, s.num_tokens) for s in sched.waiting]}, "
            f"running {[s.request_id for s in sched.running]}"
        )
        finished += advance(sched, batch)
    raise AssertionError(f"not done after {max_steps} steps")


def test_a_finished_sequence_leaves_and_a_waiting_one_joins_on_the_next_step():
    sched = make_scheduler(max_num_seqs=2)
    a, b, c = make_seq("a", 5, max_tokens=1), make_seq("b", 6, max_tokens=3), make_seq("c", 7)
    for s in (a, b, c):
        sched.add(s)

    batch = sched.schedule()
    assert plan(batch) == [("a", 5), ("b", 6)]
    assert list(sched.waiting) == [c]
    assert advance(sched, batch) == [a]
    assert a.status is SequenceStatus.FINISHED and a.block_table == []

    batch = sched.schedule()
    assert plan(batch) == [("b", 1), ("c", 7)]
    assert sched.running == [b, c] and not sched.waiting


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_num_seqs=3, max_tokens=1000)
    seqs = [make_seq(f"s{i}", 4, first=10 * i) for i in range(5)]
    for s in seqs:
        sched.add(s)
    for _ in range(3):
        batch = sched.schedule()
        assert len(batch.seqs) <= 3 and len(sched.running) <= 3
        advance(sched, batch)
    assert [s.request_id for s in sched.running] == ["s0", "s1", "s2"]
    assert len(run_to_completion(sched)) == 5


def test_each_step_stays_within_the_token_budget():
    sched = make_scheduler(max_tokens=10)
    for i in range(3):
        sched.add(make_seq(f"s{i}", 8, first=10 * i))
    while sched.has_unfinished():
        batch = sched.schedule()
        assert 0 < batch.num_tokens <= 10
        advance(sched, batch)


def test_chunked_prefill_splits_a_long_prompt_across_steps():
    sched = make_scheduler(max_tokens=16)
    long = make_seq("long", 50, max_tokens=2)
    sched.add(long)
    chunks = []
    while not long.output_token_ids:
        batch = sched.schedule()
        chunks += [n for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True) if s is long]
        advance(sched, batch)
    assert chunks == [16, 16, 16, 2]
    assert len(long.block_table) == -(-51 // BS)


def test_chunked_prefill_shares_the_budget_with_running_decodes():
    sched = make_scheduler(max_tokens=16)
    short, long = make_seq("short", 3, max_tokens=10), make_seq("long", 40)
    sched.add(short)
    advance(sched, sched.schedule())
    sched.add(long)
    batch = sched.schedule()
    assert plan(batch) == [("short", 1), ("long", 15)]


def test_without_chunked_prefill_a_prompt_is_scheduled_whole():
    sched = make_scheduler(max_tokens=16, chunked=False)
    a, b = make_seq("a", 10, max_tokens=3), make_seq("b", 10, first=50)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert plan(batch) == [("a", 10)]  # b does not fit in the 6 tokens left and is not split
    advance(sched, batch)
    batch = sched.schedule()
    assert plan(batch) == [("a", 1), ("b", 10)]


def test_preemption_evicts_the_newest_running_sequence_and_requeues_it_first():
    # 6 blocks of 4: a, b, c each take 2 blocks for their 5-token prompts (pool full), d waits.
    sched = make_scheduler(num_blocks=6)
    a, b, c, d = (make_seq(n, 5, max_tokens=8, first=10 * i) for i, n in enumerate("abcd"))
    for s in (a, b, c, d):
        sched.add(s)
    batch = sched.schedule()
    assert plan(batch) == [("a", 5), ("b", 5), ("c", 5)]
    advance(sched, batch)
    for _ in range(3):  # positions 5, 6 and 7 still fit the second block
        advance(sched, sched.schedule())

    batch = sched.schedule()  # position 8 needs a third block for everyone
    assert sched.num_preemptions == 1  # c's two blocks are enough for a and b to grow
    assert c.status is SequenceStatus.WAITING and c.block_table == [] and c.num_computed_tokens == 0
    assert c.num_preemptions == 1 and c.output_token_ids  # its generated tokens are kept for recompute
    assert list(sched.waiting)[:2] == [c, d]
    assert plan(batch) == [("a", 1), ("b", 1)]  # and no admission into a full pool
    advance(sched, batch)


def test_nothing_is_dropped_under_memory_pressure():
    sched = make_scheduler(num_blocks=10, max_tokens=24, caching=True)
    seqs = [make_seq(f"s{i}", 3 + 5 * i, max_tokens=6 + i, first=100 * i) for i in range(6)]
    for s in seqs:
        sched.add(s)
    finished = run_to_completion(sched)
    assert sched.num_preemptions > 0
    assert sorted(s.request_id for s in finished) == sorted(s.request_id for s in seqs)
    assert all(len(s.output_token_ids) == s.params.max_tokens for s in seqs)
    assert sched.blocks.num_used_blocks == 0


def test_a_preempted_sequence_is_rescheduled_without_chunked_prefill():
    # r1's 7-token prompt fits the 8-token budget whole. Preempted after generating, it must be
    # recomputed with its outputs (more than 8 tokens) and must still be scheduled again.
    sched = make_scheduler(num_blocks=5, max_tokens=8, chunked=False)
    r0, r1 = make_seq("r0", 3, max_tokens=8), make_seq("r1", 7, max_tokens=8, first=10)
    sched.add(r0)
    sched.add(r1)
    finished = run_to_completion(sched)
    assert sched.num_preemptions > 0
    assert {s.request_id for s in finished} == {"r0", "r1"}


def test_finish_removes_a_waiting_or_running_sequence_and_frees_its_blocks():
    sched = make_scheduler(max_num_seqs=1)
    a, b = make_seq("a", 6), make_seq("b", 6, first=20)
    sched.add(a)
    sched.add(b)
    advance(sched, sched.schedule())
    sched.finish(b)  # still waiting
    sched.finish(a)  # running
    assert not sched.has_unfinished()
    assert sched.blocks.num_used_blocks == 0
