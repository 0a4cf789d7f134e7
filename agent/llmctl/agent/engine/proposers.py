"""Draft proposers for speculative decoding: what might come next, cheaply. The target decides (rejection.py).

A proposer returns, for each sequence, up to k draft tokens and, where its drafts were sampled from a
distribution, that distribution per drafted position ([k, vocab], None for a deterministic proposer such as
prompt lookup, whose draft is a point mass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmctl.agent.engine.sequence import Sequence


@dataclass
class Proposal:
    tokens: list[int]
    probs: torch.Tensor | None = None
    """[len(tokens), vocab] float32: the distribution each token was drawn from; None: a point mass."""
    key: int = 0
    """What the proposer knows of its own confidence, acceptance being tracked per key (prompt lookup: the
    length of the matched n-gram)."""


@dataclass
class NgramIndex:
    """Where each n-gram of a sequence's tokens (n_min..n_max) last occurred with a token after it: the
    n-gram's tuple -> the index of that next token. Extended as the sequence grows, never rebuilt."""

    n_min: int
    n_max: int
    upto: int = 0
    """Tokens [0, upto) are indexed."""
    last: dict[tuple[int, ...], int] = field(default_factory=dict)

    def extend(self, tokens: list[int]) -> None:
        for p in range(max(self.upto, 1), len(tokens)):
            # The n-grams ending at p - 1 are followed by token p.
            for n in range(self.n_min, min(self.n_max, p) + 1):
                self.last[tuple(tokens[p - n : p])] = p
        self.upto = max(self.upto, len(tokens))

    def lookup(self, tokens: list[int], k: int) -> tuple[list[int], int]:
        """What followed the most recent earlier occurrence of the longest matching suffix, and its length."""
        for n in range(min(self.n_max, len(tokens) - 1), self.n_min - 1, -1):
            start = self.last.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + k], n
        return [], 0


class NgramProposer:
    """Prompt lookup: match the last n tokens (n from n_max down to n_min) against the request's own prompt
    and output, and propose what followed them there. No model, no tensors."""

    needs_budget_first = False

    def __init__(self, n_min: int, n_max: int):
        self.n_min, self.n_max = n_min, n_max

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[Proposal]:
        out = []
        for seq, k in zip(seqs, ks, strict=True):
            index = seq.ngram_index
            if index is None:
                index = seq.ngram_index = NgramIndex(self.n_min, self.n_max)
            tokens = seq.token_ids
            index.extend(tokens)
            found, n = index.lookup(tokens, k) if k > 0 else ([], 0)
            out.append(Proposal(found, key=n))
        return out
