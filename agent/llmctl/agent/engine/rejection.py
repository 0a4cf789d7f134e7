"""Verifying drafted tokens against the target's logits so that what comes out is distributed exactly as plain
decoding from the target would be.

Row j of a sequence's logits [k + 1, vocab] is the target's next-token distribution after the first j drafted
tokens. Greedy: a draft is accepted while it equals the target's argmax; the first mismatch is replaced by the
argmax, and when all k are accepted row k gives one token more (the bonus). Sampling (Leviathan et al., 2023):
p is row j after temperature, top-k, top-p and min-p (the same filters plain sampling applies); q is the
distribution the draft was drawn from (a point mass for a deterministic proposer). Draft d is accepted with
probability min(1, p(d) / q(d)); on rejection the token is drawn from normalise(max(p - q, 0)) and the rest is
dropped. Every emitted token is then an exact sample of the target's filtered distribution at its position.
"""

from __future__ import annotations

import torch


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from probs [V] (exponential race, as the sampler draws)."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())


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
        return drafts[:j] + [draw(residual, generator)]
    return drafts + [draw(probs[len(drafts)], generator)]
