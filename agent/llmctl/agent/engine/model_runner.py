"""ModelRunner: owns the KV pools and turns a ScheduledBatch into a ModelInput and logits."""

from __future__ import annotations

import torch

from llmctl.agent.engine import kv_pool
from llmctl.agent.engine.batch import ModelInput
from llmctl.agent.engine.models.llama import LlamaModel
from llmctl.agent.engine.scheduler import ScheduledBatch
from llmctl.agent.engine.sequence import Sequence
from llmctl.kernels.metadata import DecodeMetadata, PrefillMetadata


class ModelRunner:
    def __init__(
        self, model: LlamaModel, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: str,
        fp8_scales: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_caches = kv_pool.allocate(
            model.num_layers, num_blocks, block_size, model.num_kv_heads, model.head_dim, kv_dtype, device,
            fp8_scales,
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
        """Build the step's tensors; returns them and the sequences that sample, in logits-row order (a sequence
        with drafted tokens has 1 + len(draft_token_ids) rows, the others one)."""
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
                ids.extend(s.step_tokens(start, n))
                positions.extend(range(start, start + n))
                slot_mapping.extend(s.block_table[p // bs] * bs + p % bs for p in range(start, start + n))
                if start + n == s.num_tokens + len(s.draft_token_ids):
                    # The last token's logits, and with drafted tokens every draft's (rejection.py).
                    first = len(ids) - 1 - len(s.draft_token_ids)
                    logits_rows.extend(range(first, len(ids)))
                    samplers.append(s)
            tables = self._tables(seqs, [-(-(a + n) // bs) for a, n in zip(starts, lens, strict=True)])
            prefill = prefill_metadata(lens, starts, tables, bs, dev)

        model_input = ModelInput(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=dev),
            decode=decode,
            prefill=prefill,
            logits_rows=torch.tensor(logits_rows, dtype=torch.long, device=dev),
        )
        return model_input, samplers

    def score(self, token_lists: list[list[int]]) -> list[torch.Tensor]:
        """Float32 logits [len, vocab] at every position of each token list (evaluation, calibration)."""
        return score_tokens(self.model, token_lists, self.block_size, self.kv_caches, self.device)

    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        model_input, samplers = self.prepare(batch)
        logits = self.model(model_input, self.kv_caches)
        return logits.cpu(), samplers


def prefill_metadata(
    lens: list[int], starts: list[int], block_tables: torch.Tensor, block_size: int, device: str
) -> PrefillMetadata:
    """Chunks of `lens` new tokens after `starts` cached ones, reading the padded block tables."""
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return PrefillMetadata(
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_starts=torch.tensor(starts, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        block_size=block_size,
        query_lens=lens,
        starts=starts,
        max_query_len=max(lens),
    )


def chunks_input(
    chunks: list[list[int]], starts: list[int], tables: list[list[int]], block_size: int, device: str,
    every_position: bool = False,
) -> ModelInput:
    """A step of prefill chunks only: chunk i's tokens at positions starts[i].., its K/V into the blocks of
    tables[i]; logits at every row, or after each chunk's last token."""
    lens = [len(c) for c in chunks]
    width = max(-(-(s + n) // block_size) for s, n in zip(starts, lens, strict=True))
    padded = torch.tensor([t[:width] + [0] * (width - len(t[:width])) for t in tables], dtype=torch.int32)
    ids, positions, slots = [], [], []
    for start, chunk, table in zip(starts, chunks, tables, strict=True):
        ids.extend(chunk)
        positions.extend(range(start, start + len(chunk)))
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, start + len(chunk)))
    prefill = prefill_metadata(lens, starts, padded, block_size, device)
    return ModelInput(
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
        decode=None,
        prefill=prefill,
        logits_rows=torch.arange(sum(lens), device=device) if every_position
        else prefill.cu_seqlens_q[1:].long() - 1,
    )


def score_tokens(
    model: LlamaModel, token_lists: list[list[int]], block_size: int, like: list[kv_pool.KVLayer] | None,
    device: str, every_position: bool = True,
) -> list[torch.Tensor]:
    """One prefill of whole sequences from position 0, logits at every row (or each sequence's last).

    Uses a scratch KV pool sized for exactly these tokens, in the dtype (and fp8 scales) of the pool
    `like`, so scoring never disturbs a serving engine's cache; None: the model's own dtype.
    """
    if not token_lists or any(not t for t in token_lists):
        raise ValueError("score needs at least one non-empty token list")
    lens = [len(t) for t in token_lists]
    nblocks = [-(-n // block_size) for n in lens]
    tables, first = [], 0
    for n in nblocks:
        tables.append(list(range(first, first + n)))
        first += n
    dtype = like[0].k.dtype if like else model.embed_tokens.dtype
    pools = kv_pool.allocate(model.num_layers, first, block_size, model.num_kv_heads, model.head_dim, dtype, device)
    if like and dtype == torch.float8_e4m3fn:
        for pool, ref in zip(pools, like, strict=True):
            pool.k_scale, pool.v_scale = ref.k_scale, ref.v_scale
    model_input = chunks_input(token_lists, [0] * len(lens), tables, block_size, device, every_position)
    logits = model(model_input, pools)
    return list(logits.split(lens)) if every_position else list(logits)
