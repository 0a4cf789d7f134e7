"""Verifying drafted tokens against the target's logits so that what comes out is distributed exactly as plain
decoding from the target would be.

Row j of a sequence's logits [k + 1, vocab] is the target's next-token distribution after the first j drafted
tokens. Greedy: a draft is accepted while it equals the target's argmax; the first mismatch is replaced by the
argmax, and when all k are accepted row k gives one token more (the bonus). Sampling (Leviathan et al., 2023):
p is row j after temperature, top-k, top-p and min-p (the same filters plain sampling applies); q is the
distribution the draft was drawn from (a point mass for a deterministic proposer). Draft d is accepted with
probability min(1, p(d) / q(d)); on rejection the token is drawn from normalise(max(p - q, 0)) and the rest is
dropped. Every emitted token is then an exact sample of the target's filtered distribution at its position.

A seeded request is verified by coupling instead: each position's token is the one plain sampling would draw
there, from the same noise (sampler.seeded_generator), and a draft is accepted when it equals that token. That is
plain sampling itself, so a seeded request's tokens do not depend on how many tokens were drafted (which the
batch decides) and equal those of the request decoded without speculation; a point-mass draft is accepted with
probability p(d), as under rejection sampling.
"""

from __future__ import annotations

import torch

from llmctl.agent.engine.sampler import race, seeded_generator


def verify_greedy(logits: torch.Tensor, drafts: list[int]) -> list[int]:
    """logits [k + 1, V]: the accepted drafts and one token of the target's own."""
    best = logits.max(-1).indices.tolist()
    for j, d in enumerate(drafts):
        if d != best[j]:
            return best[: j + 1]
    return best[: len(drafts) + 1]


def verify_sampled(
    probs: torch.Tensor, drafts: list[int], draft_probs: torch.Tensor | None, generator: torch.Generator
) -> list[int]:
    """probs [k + 1, V]: the target's filtered distributions; draft_probs [k, V] or None for point-mass drafts."""
    for j, d in enumerate(drafts):
        p = float(probs[j, d])
        q = 1.0 if draft_probs is None else float(draft_probs[j, d])
        u = float(torch.rand((), generator=generator))
        if q > 0 and u * q < p:
            continue
        if draft_probs is None:
            residual = probs[j].clone()
            residual[d] = 0.0
        else:
            residual = (probs[j] - draft_probs[j]).clamp_min_(0.0)
        if float(residual.sum()) <= 0.0:  # p == q (up to rounding): the draft cannot have been rejected
            residual = probs[j]
        return drafts[:j] + [race(residual, generator)]
    return drafts + [race(probs[len(drafts)], generator)]


def verify_coupled(probs: torch.Tensor, drafts: list[int], seed: int, first_position: int) -> list[int]:
    """probs [k + 1, V]; row j's token is at index first_position + j of the sequence. The target's own tokens
    up to the first that differs from its draft (or all k + 1)."""
    out = []
    for j in range(len(drafts) + 1):
        token = race(probs[j], seeded_generator(seed, first_position + j))
        out.append(token)
        if j == len(drafts) or drafts[j] != token:
            return out
    return out
