"""ModelRunner: owns the KV pools and turns a ScheduledBatch into a ModelInput and logits."""

from __future__ import annotations

import torch

from agent.engine import kv_pool
from agent.engine.batch import ModelInput
from agent.engine.models.llama import LlamaModel
from agent.engine.scheduler import ScheduledBatch
from agent.engine.sequence import Sequence
from kernels.metadata import DecodeMetadata, PrefillMetadata


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: str):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_caches = kv_pool.allocate(
            model.num_layers, num_blocks, block_size, model.num_kv_heads, model.head_dim, kv_dtype, device
        )

    @staticmethod
    def _tables(seqs: list[Sequence], num_blocks: list[int]) -> torch.Tensor:
        """[N, max blocks] int32 block tables cut to the blocks each sequence reads, padded with 0."""
        width = max(num_blocks)
        return torch.tensor(
            [s.block_table[:n] + [0] * (width - n) for s, n in zip(seqs, num_blocks, strict=True)],
            dtype=torch.int32,
        )

    def prepare(self, batch: ScheduledBatch) -> tuple[ModelInput, list[Sequence]]:
        """Build the step's tensors; returns them and the sequences that sample, in logits-row order."""
        bs = self.block_size
        dev = self.device
        decodes = [s for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True) if n == 1]
        prefills = [(s, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True) if n > 1]
        ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        logits_rows: list[int] = []
        samplers: list[Sequence] = []

        decode = None
        if decodes:
            ctx = [s.num_computed_tokens + 1 for s in decodes]
            decode = DecodeMetadata(
                block_tables=self._tables(decodes, [-(-c // bs) for c in ctx]).to(dev),
                context_lens=torch.tensor(ctx, dtype=torch.int32, device=dev),
                block_size=bs,
                max_context_len=max(ctx),
            )
            for row, s in enumerate(decodes):
                p = s.num_computed_tokens
                ids.append(s.token_at(p))
                positions.append(p)
                slot_mapping.append(s.block_table[p // bs] * bs + p % bs)
                if p + 1 == s.num_tokens:
                    logits_rows.append(row)
                    samplers.append(s)

        prefill = None
        if prefills:
            seqs = [s for s, _ in prefills]
            lens = [n for _, n in prefills]
            starts = [s.num_computed_tokens for s in seqs]
            for s, n, start in zip(seqs, lens, starts, strict=True):
                ids.extend(s.token_slice(start, start + n))
                positions.extend(range(start, start + n))
                slot_mapping.extend(s.block_table[p // bs] * bs + p % bs for p in range(start, start + n))
                if start + n == s.num_tokens:
                    logits_rows.append(len(ids) - 1)
                    samplers.append(s)
            cu = [0]
            for n in lens:
                cu.append(cu[-1] + n)
            prefill = PrefillMetadata(
                cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
                context_starts=torch.tensor(starts, dtype=torch.int32, device=dev),
                block_tables=self._tables(seqs, [-(-(a + n) // bs) for a, n in zip(starts, lens, strict=True)]).to(dev),
                block_size=bs,
                query_lens=lens,
                starts=starts,
                max_query_len=max(lens),
            )

        model_input = ModelInput(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=dev),
            decode=decode,
            prefill=prefill,
            logits_rows=torch.tensor(logits_rows, dtype=torch.long, device=dev),
        )
        return model_input, samplers

    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        model_input, samplers = self.prepare(batch)
        logits = self.model(model_input, self.kv_caches)
        return logits.cpu(), samplers
