"""Per-step attention metadata: built once per step by the engine, read by every layer's kernels.

Triton kernels read the block tables directly; the torch reference derives gather indices from them
once (cached properties) and reuses them in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class DecodeMetadata:
    """One query token per sequence, attending to its whole cached context (itself included)."""

    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    context_lens: torch.Tensor  # [B] int32, cached tokens per sequence including the current one
    block_size: int
    max_context_len: int

    @property
    def num_seqs(self) -> int:
        return int(self.block_tables.shape[0])

    @cached_property
    def gather_slots(self) -> torch.Tensor:
        """[B, L] flat pool slot of each context position, L = max_context_len rounded up to a block."""
        bs = self.block_size
        width = -(-self.max_context_len // bs) * bs
        pos = torch.arange(width, device=self.block_tables.device)
        return self.block_tables[:, pos // bs].long() * bs + (pos % bs)[None, :]

    @cached_property
    def mask(self) -> torch.Tensor:
        """[B, L] True where a context position exists."""
        pos = torch.arange(self.gather_slots.shape[1], device=self.block_tables.device)
        return pos[None, :] < self.context_lens[:, None]


@dataclass
class PrefillMetadata:
    """Varlen causal prefill: each sequence's new tokens are contiguous rows of q, attending to the
    sequence's cached context plus themselves."""

    cu_seqlens_q: torch.Tensor  # [N+1] int32 row offsets of each sequence's new tokens
    context_starts: torch.Tensor  # [N] int32 tokens already cached before the new ones
    block_tables: torch.Tensor  # [N, max_blocks] int32, padded with 0
    block_size: int
    query_lens: list[int]  # host copies, so the reference loops without device syncs
    starts: list[int]
    max_query_len: int

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @cached_property
    def gather_slots(self) -> list[torch.Tensor]:
        """Per sequence: [context_start + n] flat slots of every position so far."""
        bs = self.block_size
        out = []
        for i, (n, start) in enumerate(zip(self.query_lens, self.starts, strict=True)):
            ctx = start + n
            table = self.block_tables[i, : -(-ctx // bs)].long()
            offsets = torch.arange(bs, device=table.device)
            out.append((table[:, None] * bs + offsets[None, :]).flatten()[:ctx])
        return out
