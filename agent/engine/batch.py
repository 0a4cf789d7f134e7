"""ModelInput: one step's flat mixed batch as tensors, built by the model runner from a ScheduledBatch.

Layout: the decode sequences' single tokens come first (rows 0..num_decodes-1), then each prefill
chunk's tokens in order. Every layer writes all new K/V into the pool before any attention reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillChunk:
    start: int
    """Row of the chunk's first token in the flat batch."""
    num_tokens: int
    context_start: int
    """Position of the chunk's first token (= tokens already in the cache before it)."""
    slots: torch.Tensor
    """[context_start + num_tokens] flat KV slots of every position of the sequence so far."""


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] flat KV slot each new token is written to
    num_decodes: int
    decode_slots: torch.Tensor | None  # [num_decodes, L] padded context slots
    decode_mask: torch.Tensor | None  # [num_decodes, L] True where a context position is valid
    prefills: list[PrefillChunk]
    logits_rows: torch.Tensor  # [S] rows of the flat batch whose next-token logits are needed

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
