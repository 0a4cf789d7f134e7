"""ModelInput: one step's flat mixed batch as tensors, built by the model runner from a ScheduledBatch.

Layout: the decode sequences' single tokens come first (rows 0..num_decodes-1), then each prefill
chunk's tokens in order. Every layer writes all new K/V into the pool before any attention reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmctl.kernels.metadata import DecodeMetadata, PrefillMetadata


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] flat KV slot each new token is written to
    decode: DecodeMetadata | None
    """Rows 0 .. num_decodes-1."""
    prefill: PrefillMetadata | None
    """The remaining rows."""
    logits_rows: torch.Tensor  # [S] rows of the flat batch whose next-token logits are needed

    @property
    def num_decodes(self) -> int:
        return 0 if self.decode is None else self.decode.num_seqs

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
