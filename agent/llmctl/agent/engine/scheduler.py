"""Iteration-level continuous batching with chunked prefill and preemption by recompute.

Each step spends a token budget: running sequences first (decodes, with their drafted tokens when speculating,
and unfinished prefill chunks, in admission order), then waiting ones in arrival order. When the pool runs dry the newest running
sequence is preempted: its blocks are freed and it is requeued at the front to be recomputed.
No tensors here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmctl.agent.engine.kv_cache import BlockManager
from llmctl.agent.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    """Tokens of each sequence computed this step (1 for a decode)."""

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        preempted = False

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            verified = seq.num_uncomputed_tokens
            if verified != 1:
                seq.draft_token_ids = []
            n = min(verified + len(seq.draft_token_ids), budget)
            del seq.draft_token_ids[max(n - verified, 0) :]  # what the budget leaves room for
            if self._must_wait_for_whole(seq, n):
                i += 1
                continue
            if seq.draft_token_ids and not self.blocks.can_grow(seq, n):
                seq.draft_token_ids = []  # a draft never costs another sequence its blocks
                n = min(verified, budget)
            while not self.blocks.can_grow(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.blocks.grow(seq, n)
                # Drafted tokens are not the sequence's until verified: no block of them is published.
                self.blocks.cache_computed_blocks(seq, seq.num_computed_tokens + min(n, verified))
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted: everything after it is gone too

        # After a preemption the pool is full: admitting anyone now would only thrash.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            self.blocks.admit(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            if self._must_wait_for_whole(seq, n):
                self.blocks.release(seq)
                break
            if not self.blocks.can_grow(seq, n):
                self.blocks.release(seq)
                break
            self.waiting.popleft()
            self.blocks.count_admission(seq)
            self.blocks.grow(seq, n)
            self.blocks.cache_computed_blocks(seq, seq.num_computed_tokens + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def _must_wait_for_whole(self, seq: Sequence, n: int) -> bool:
        """Without chunked prefill a prompt runs whole; but a preempted sequence whose prompt plus
        outputs outgrew the budget could never run whole, so its recomputation is chunked."""
        return (
            not self.config.enable_chunked_prefill
            and n < seq.num_uncomputed_tokens <= self.config.max_num_batched_tokens
        )

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.draft_token_ids = []
        self.blocks.release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = SequenceStatus.FINISHED
