"""A draft model inside the engine: a smaller model with the target's tokenizer (or the target's own 4-bit copy)
drafts k tokens per sequence, one batched forward per drafted position.

Its KV pool mirrors the target's: the same number of blocks of the same size, addressed through the target's
block tables, so the block manager's decisions (allocation, prefix sharing, preemption, trimming a rejected
draft) hold for both and the draft needs no bookkeeping of its own beyond `Sequence.draft_computed`, the
tokens whose draft K/V is in place. A sequence's first draft therefore prefills its whole context in the draft
model, and later steps catch up on what the target accepted since.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import torch

from llmctl.agent.engine import kv_pool
from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.model_runner import chunks_input
from llmctl.agent.engine.models.llama import LlamaModel
from llmctl.agent.engine.proposers import Proposal
from llmctl.agent.engine.sampler import filtered_probs, race, seeded_generator
from llmctl.agent.engine.sequence import Sequence

SECONDS_MEMORY = 0.9
CATCH_UP_PROBE = 64


class DraftModelProposer:
    needs_budget_first = True
    """Drafting costs a forward per position: decide how many tokens first, then draft exactly that many."""

    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: str):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_caches = kv_pool.allocate(
            model.num_layers, num_blocks, block_size, model.num_kv_heads, model.head_dim, kv_dtype, device
        )
        self.seconds_per_forward = self._time_forward(1)
        """Seconds of one drafted position for a small batch, kept current as the engine drafts."""
        self.seconds_per_token = self._time_forward(CATCH_UP_PROBE) / CATCH_UP_PROBE
        """Seconds per token of catching up (a prefill in the draft model)."""

    def _time_forward(self, tokens: int) -> float:
        # Blocks 0..: whatever is written there is overwritten before any sequence reads it, since a sequence's
        # draft K/V is always written by its own catch-up first.
        table = list(range(-(-tokens // self.block_size)))
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            self._forward([0], [[0] * tokens], [table])
            best = min(best, time.perf_counter() - started)
        return best

    def catch_up_seconds(self, seq: Sequence) -> float:
        """What drafting for seq now costs before its first draft: the tokens its draft K/V lacks."""
        return (seq.num_tokens - seq.draft_computed) * self.seconds_per_token

    def _forward(self, starts: list[int], chunks: list[list[int]], tables: list[list[int]]) -> torch.Tensor:
        """Draft forward of each chunk at positions start.., K/V into the target's block ids; float32 logits
        [S, V] after each chunk's last token."""
        model_input = chunks_input(chunks, starts, tables, self.block_size, self.device)
        return self.model(model_input, self.kv_caches).float().cpu()

    def propose(self, seqs: list[Sequence], ks: list[int], generator: torch.Generator) -> list[Proposal]:
        """ks[i] tokens for seqs[i], whose block tables already hold their slots (the scheduler reserved them)."""
        tokens: list[list[int]] = [[] for _ in seqs]
        probs: list[list[torch.Tensor]] = [[] for _ in seqs]
        # Catch up on the tokens the target has and the draft has not seen, the last sampled one included.
        starts = [s.draft_computed for s in seqs]
        logits = self._forward(starts, [s.token_slice(a, s.num_tokens) for s, a in zip(seqs, starts, strict=True)],
                               [s.block_table for s in seqs])
        active = list(range(len(seqs)))
        for seq in seqs:
            seq.draft_computed = seq.num_tokens
        for depth in range(max(ks)):
            rows = self._sample(logits, [seqs[i] for i in active], generator, depth)
            for i, (token, q) in zip(active, rows, strict=True):
                tokens[i].append(token)
                if q is not None:
                    probs[i].append(q)
            active = [i for i in active if len(tokens[i]) < ks[i]]
            if not active:
                break
            # The token just drafted goes in at its position; its logits give the next draft.
            started = time.perf_counter()
            logits = self._forward([seqs[i].num_tokens + depth for i in active], [[tokens[i][-1]] for i in active],
                                   [seqs[i].block_table for i in active])
            self.seconds_per_forward = (SECONDS_MEMORY * self.seconds_per_forward
                                        + (1 - SECONDS_MEMORY) * (time.perf_counter() - started))
            for i in active:
                seqs[i].draft_computed += 1
        return [Proposal(t, torch.stack(p) if p else None) for t, p in zip(tokens, probs, strict=True)]

    @staticmethod
    def _sample(logits: torch.Tensor, seqs: list[Sequence], generator: torch.Generator, depth: int):
        """Per row: (draft token, the distribution it was drawn from or None for a greedy request's argmax). A
        seeded request's draft uses the noise its target token at that position will use (rejection.py)."""
        out = []
        sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
        q = filtered_probs(logits[sampled], [seqs[i].params for i in sampled]) if sampled else None
        at = {i: r for r, i in enumerate(sampled)}
        for i, seq in enumerate(seqs):
            if seq.params.greedy:
                out.append((int(logits[i].argmax()), None))
                continue
            row = q[at[i]]
            seed = seq.params.seed
            noise_from = generator if seed is None else seeded_generator(seed, seq.num_tokens + depth)
            out.append((race(row, noise_from), row))
        return out


def load_draft(config: EngineConfig, tokenizer, hf_config, dtype: torch.dtype):
    """The finalized draft model of speculative_method draft (speculative_model) or self-int4 (the target's own
    checkpoint as 4-bit AWQ, quantized once and kept in $LLMCTL_HOME/drafts). Its tokenizer must be the target's,
    token for token."""
    from llmctl.agent.engine import loader
    from llmctl.agent.engine.engine import load_quantized
    from llmctl.agent.engine.models.llama import finalize

    if config.speculative_method == "draft":
        name, folder = config.speculative_model, loader.resolve_model(config.speculative_model)
    else:
        name, folder = f"{config.model} (4-bit AWQ)", self_int4_copy(loader.resolve_model(config.model))
    draft_hf = loader.load_model_config(folder)
    draft_tokenizer = loader.load_tokenizer(folder)
    if draft_tokenizer.get_vocab() != tokenizer.get_vocab() or draft_hf.vocab_size != hf_config.vocab_size:
        raise InvalidRequest(
            f"draft model {name} has another tokenizer than the target {config.model} "
            f"({draft_hf.vocab_size} vs {hf_config.vocab_size} logits, {len(draft_tokenizer)} vs {len(tokenizer)} "
            "tokens): a draft must share the target's vocabulary token for token"
        )
    draft_config = EngineConfig(model=str(folder), dtype=config.dtype, device=config.device)
    draft, _ = load_quantized(draft_config, folder, draft_hf, draft_tokenizer, dtype)
    finalize(draft)
    return draft


def self_int4_copy(folder) -> Path:
    """The AWQ copy of a float checkpoint folder, made on first use (AWQ calibrates for a minute or more on a
    CPU) under $LLMCTL_HOME/drafts, keyed by the folder and its weights' size and time; an already quantized
    checkpoint is its own copy."""
    from llmctl.agent.engine import loader
    from llmctl.agent.engine.paths import llmctl_home
    from llmctl.agent.engine.quantization import checkpoint_spec
    from llmctl.agent.engine.quantization.checkpoint import quantize_to_folder

    folder = Path(folder).resolve()
    if checkpoint_spec(loader.load_model_config(folder)) is not None:
        return folder
    stamp = [str(folder)] + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}"
                             for w in sorted(folder.glob("*.safetensors"))]
    out = llmctl_home() / "drafts" / f"{folder.name}-awq-{hashlib.sha256(repr(stamp).encode()).hexdigest()[:12]}"
    if not (out / "config.json").is_file():
        partial = out.with_name(out.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        quantize_to_folder(str(folder), "awq", partial)
        try:
            partial.replace(out)  # whole or absent: a crash leaves only a .partial folder
        except OSError:  # another replica made it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return out
