"""Which KV blocks belong to whom: block tables, refcounts, prefix caching and LRU eviction.

No tensors here: the pools live in the model runner. A full block's identity is a hash chained from
its parent block's hash and its own token ids, so equal prefixes map to equal chains.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from llmctl.agent.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class PrefixCacheCounters:
    queries: int = 0
    """Prompt tokens looked up."""
    hits: int = 0
    """Prompt tokens found in the cache."""


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    blocks: list[Block] = field(init=False)
    free: OrderedDict[int, None] = field(init=False)
    """Blocks with ref_count 0, least recently used first; cached ones keep their hash until reused."""
    cached: dict[int, int] = field(init=False)
    """block hash -> block id of every full block whose contents are known."""
    counters: PrefixCacheCounters = field(default_factory=PrefixCacheCounters)

    def __post_init__(self) -> None:
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free = OrderedDict((i, None) for i in range(self.num_blocks))
        self.cached = {}

    # -- accounting -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache -----------------------------------------------------------------------
    def _chain_hashes(self, token_ids: list[int], num_full_blocks: int, start: int = 0, parent=None):
        bs = self.block_size
        for i in range(start, num_full_blocks):
            ids = tuple(token_ids[i * bs : (i + 1) * bs])
            parent = hash((parent, ids))
            yield i, parent, ids

    def admit(self, seq: Sequence) -> None:
        """Give a waiting sequence its longest cached prefix (ref-counted); sets num_computed_tokens."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        seq.block_hashes = []
        if not self.enable_prefix_caching:
            return
        tokens = seq.token_ids
        # At least one token must be computed to produce logits, so the last block never counts as a hit.
        max_blocks = (len(tokens) - 1) // self.block_size
        for _, h, ids in self._chain_hashes(tokens, max_blocks):
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != ids:
                break
            self._ref(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens

    def count_admission(self, seq: Sequence) -> None:
        """Prefix-cache hit statistics, counted once per successful admission."""
        if self.enable_prefix_caching:
            self.counters.queries += seq.num_prompt_tokens
            self.counters.hits += min(seq.num_cached_tokens, seq.num_prompt_tokens)

    def cache_computed_blocks(self, seq: Sequence, num_tokens: int | None = None) -> None:
        """Publish the sequence's full blocks within its first num_tokens (default: those computed).

        The scheduler publishes blocks in the step that computes them: every layer writes all of a
        step's new K/V before any attention reads, so a request admitted later in the same step can
        already share them (and a sequence scheduled this step is never preempted in it).
        """
        if not self.enable_prefix_caching:
            return
        full = (seq.num_computed_tokens if num_tokens is None else num_tokens) // self.block_size
        done = len(seq.block_hashes)
        if full <= done:
            return
        parent = seq.block_hashes[-1] if done else None
        for i, h, ids in self._chain_hashes(seq.token_ids, full, start=done, parent=parent):
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h not in self.cached and block.block_hash is None:
                block.block_hash, block.token_ids = h, ids
                self.cached[h] = block.block_id

    # -- allocation -------------------------------------------------------------------------
    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def can_grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= len(self.free)

    def grow(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make the block table cover num_computed_tokens + num_new_tokens. Caller checked can_grow."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        for _ in range(need):
            block_id, _ = self.free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                # Evicting a cached block: forget it so no one finds stale contents under its hash.
                del self.cached[block.block_hash]
                block.block_hash, block.token_ids = None, ()
            block.ref_count = 1
            seq.block_table.append(block_id)

    def trim(self, seq: Sequence) -> None:
        """Give back the tail blocks beyond num_computed_tokens (a rejected draft's slots). Never cached: drafted
        tokens' blocks are not published."""
        keep = self.blocks_needed(seq.num_computed_tokens)
        seq.draft_computed = min(seq.draft_computed, seq.num_computed_tokens)
        while len(seq.block_table) > keep:
            block_id = seq.block_table.pop()
            block = self.blocks[block_id]
            assert block.ref_count == 1 and block.block_hash is None, "a drafted block was shared or published"
            block.ref_count = 0
            self.free[block_id] = None
            self.free.move_to_end(block_id, last=False)

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks at refcount 0 stay cached until evicted."""
        # Tail blocks first, so the most specific (least shareable) blocks are evicted first.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, "block refcount went negative"
            if block.ref_count == 0:
                if block.block_hash is None:
                    # Uncached contents are worthless: reuse these blocks before any cached one.
                    self.free[block_id] = None
                    self.free.move_to_end(block_id, last=False)
                else:
                    self.free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
        seq.draft_computed = 0
