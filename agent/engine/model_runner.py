"""ModelRunner: owns the KV pools and turns a ScheduledBatch into a ModelInput and logits."""

from __future__ import annotations

import torch

from agent.engine.batch import ModelInput, PrefillChunk
from agent.engine.models.llama import LlamaModel
from agent.engine.scheduler import ScheduledBatch
from agent.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, dtype: torch.dtype, device: str):
        self.model = model
        self.block_size = block_size
        self.device = device
        shape = (num_blocks, block_size, model.num_kv_heads, model.head_dim)
        # [num_blocks, block_size, KVH, D] per layer, K and V.
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(model.num_layers)
        ]

    @staticmethod
    def kv_bytes_per_token(model: LlamaModel, dtype: torch.dtype) -> int:
        return 2 * model.num_layers * model.num_kv_heads * model.head_dim * torch.tensor([], dtype=dtype).element_size()

    def _slots(self, block_table: list[int], num_positions: int) -> torch.Tensor:
        bt = torch.tensor(block_table[: -(-num_positions // self.block_size)], dtype=torch.long)
        offsets = torch.arange(self.block_size, dtype=torch.long)
        return (bt[:, None] * self.block_size + offsets[None, :]).flatten()[:num_positions]

    def prepare(self, batch: ScheduledBatch) -> tuple[ModelInput, list[Sequence]]:
        """Build the step's tensors; returns them and the sequences that sample, in logits-row order."""
        bs = self.block_size
        decodes = [s for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True) if n == 1]
        prefills = [(s, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True) if n > 1]
        ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        logits_rows: list[int] = []
        samplers: list[Sequence] = []

        decode_slots = decode_mask = None
        if decodes:
            ctx = [s.num_computed_tokens + 1 for s in decodes]
            max_blocks = -(-max(ctx) // bs)
            tables = torch.tensor([s.block_table[:max_blocks] + [0] * (max_blocks - len(s.block_table[:max_blocks]))
                                   for s in decodes], dtype=torch.long)
            pos = torch.arange(max_blocks * bs, dtype=torch.long)
            decode_slots = tables[:, pos // bs] * bs + (pos % bs)[None, :]  # [B, L]
            ctx_t = torch.tensor(ctx, dtype=torch.long)
            decode_mask = pos[None, :] < ctx_t[:, None]
            for row, s in enumerate(decodes):
                p = s.num_computed_tokens
                ids.append(s.token_at(p))
                positions.append(p)
                slot_mapping.append(s.block_table[p // bs] * bs + p % bs)
                if p + 1 == s.num_tokens:
                    logits_rows.append(row)
                    samplers.append(s)

        chunks: list[PrefillChunk] = []
        for s, n in prefills:
            start = s.num_computed_tokens
            slots = self._slots(s.block_table, start + n)
            chunks.append(PrefillChunk(start=len(ids), num_tokens=n, context_start=start, slots=slots))
            ids.extend(s.token_slice(start, start + n))
            positions.extend(range(start, start + n))
            slot_mapping.extend(slots[start:].tolist())
            if start + n == s.num_tokens:
                logits_rows.append(len(ids) - 1)
                samplers.append(s)

        dev = self.device
        model_input = ModelInput(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=dev),
            num_decodes=len(decodes),
            decode_slots=None if decode_slots is None else decode_slots.to(dev),
            decode_mask=None if decode_mask is None else decode_mask.to(dev),
            prefills=[PrefillChunk(c.start, c.num_tokens, c.context_start, c.slots.to(dev)) for c in chunks],
            logits_rows=torch.tensor(logits_rows, dtype=torch.long, device=dev),
        )
        return model_input, samplers

    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        model_input, samplers = self.prepare(batch)
        logits = self.model(model_input, self.kv_caches)
        return logits.cpu(), samplers
