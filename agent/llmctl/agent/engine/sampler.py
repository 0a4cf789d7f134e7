"""Token selection: greedy, temperature, top-k, top-p, min-p, per-request seeds, logprobs.

Filters run vectorised over the rows that sample; randomness is drawn per request from its own
generator (when seeded), so a seeded request gives the same tokens whatever batch it shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmctl.agent.engine.sampling import SamplingParams


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]
    """Per row: (sampled token logprob, [(top id, logprob), ...]) when asked, else None."""


def apply_filters(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask disallowed tokens to -inf. logits [S, V] (temperature already applied); top_k 0 = off."""
    vocab = logits.shape[-1]
    if bool((min_p > 0).any()):
        probs = logits.softmax(-1)
        keep_min = probs >= min_p[:, None] * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(~keep_min, float("-inf"))
    need_k = bool(((top_k > 0) & (top_k < vocab)).any())
    need_p = bool((top_p < 1).any())
    if need_k or need_p:
        sorted_logits, order = logits.sort(-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
        if need_k:
            k = torch.where(top_k > 0, top_k, vocab)
            drop |= ranks >= k[:, None]
            # top-p then applies to the distribution renormalised over the top-k survivors.
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        if need_p:
            probs = sorted_logits.softmax(-1)
            # Drop a token if the tokens ranked above it already reach top_p; the best is always kept.
            before = probs.cumsum(-1) - probs
            drop |= before >= top_p[:, None]
        drop[:, 0] = False
        mask = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(mask, float("-inf"))
    return logits


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Per row (one SamplingParams each): the distribution sampling draws from, after temperature, min-p, top-k
    and top-p. [R, V] float32."""
    temps = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params])
    filtered = apply_filters(
        logits / temps[:, None],
        torch.tensor([p.top_k for p in params]),
        torch.tensor([p.top_p for p in params]),
        torch.tensor([p.min_p for p in params]),
    )
    return filtered.softmax(-1)


def seeded_generator(seed: int, position: int) -> torch.Generator:
    """The generator of a seeded request's token at `position` (its index in prompt + output): the token's noise
    depends on nothing else, so the same seed gives the same tokens in any batch, with or without drafts."""
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + position) % (1 << 63))


def race(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from probs [V]: argmax(p / E), E ~ Exp(1) per token (the exponential race)."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())


class Sampler:
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
    ) -> SampleResult:
        """logits: float32 [S, V], one row per sampling sequence."""
        rows = logits.shape[0]
        greedy = [p.greedy for p in params]
        tokens = torch.empty(rows, dtype=torch.long)
        if all(greedy):
            tokens = logits.max(-1).indices  # max() is ~3x faster than argmax() on CPU
        else:
            probs = filtered_probs(logits, params)
            for r in range(rows):
                if greedy[r]:
                    tokens[r] = logits[r].argmax()
                else:
                    tokens[r] = race(probs[r], generators[r] or self.generator)
        token_list = tokens.tolist()
        logprobs: list = [None] * rows
        for r in range(rows):
            if params[r].logprobs is not None:
                logprobs[r] = self.logprobs_at(logits[r : r + 1], token_list[r : r + 1], params[r].logprobs)[0]
        return SampleResult(token_list, logprobs)

    @staticmethod
    def logprobs_at(logits: torch.Tensor, tokens: list[int], num_top: int | None) -> list:
        """Row i's log-probability of tokens[i] and its num_top best alternatives; [None] * len when num_top is
        None (not asked for). logits [>= len(tokens), V]."""
        if num_top is None:
            return [None] * len(tokens)
        lp = logits[: len(tokens)].log_softmax(-1)
        out = []
        for r, token in enumerate(tokens):
            top = lp[r].topk(num_top) if num_top else None
            alts = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
            out.append((float(lp[r, token]), alts))
        return out
