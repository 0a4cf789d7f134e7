"""Speculative decoding in the engine's step: how many tokens each sequence drafts, and what the verified step
hands back.

Drafting pays only where the tokens it adds outweigh what the extra query rows cost, and both vary: a proposer
that is right half the time is worth 2-3 drafts at batch 1 on a CPU, where a step costs about the same for 1 or 5
rows, and nothing at batch 64, where every row costs its share of compute. So each step decides, from numbers
the engine measures as it runs:

- the step's cost: seconds = a + b x (query rows), fitted to the steps so far (least squares that forgets old
  steps, so a change of load moves it), with a prior on b that lets the first drafts happen;
- each sequence's acceptance rate alpha: the chance that its next draft is accepted, from the drafts it has
  had verified (a prior for a new sequence). Its j-th draft then adds alpha ** j tokens in expectation.

Drafts are taken best first (highest alpha ** j over all sequences) while each one raises expected tokens per
second, i.e. while its expected tokens exceed b x (tokens per second so far). A sequence whose drafts keep
failing falls to 0 drafts: plain decoding, at plain decoding's cost (one query row). Its alpha drifts back toward
the prior while it does not draft, so a sequence whose text turns repetitive later is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmctl.agent.engine import rejection
from llmctl.agent.engine.sampler import Sampler, SampleResult, filtered_probs
from llmctl.agent.engine.sequence import Sequence

PRIOR_ALPHA = 0.5
ALPHA_MEMORY = 0.9
"""Each verified draft position moves alpha 10% toward what happened (1 accepted, 0 rejected)."""
ALPHA_RECOVERY = 0.02
"""Per step without drafts, alpha moves 2% of the way back to the prior."""
COST_MEMORY = 0.98
PRIOR_ROW_SHARE = 0.05
"""Before the fit has seen steps of different sizes: an extra query row costs 5% of an average step."""


@dataclass
class SpecCounters:
    """vLLM's spec_decode series: drafts verified, tokens drafted, tokens accepted (in all and per position)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a verified draft step yields: accepted drafts plus the target's own (1 without drafts)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0


@dataclass
class StepCost:
    """seconds = a + b x rows, exponentially weighted least squares over the steps seen."""

    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        m = COST_MEMORY
        self.w, self.sx, self.sy = m * self.w + 1, m * self.sx + rows, m * self.sy + seconds
        self.sxx, self.sxy = m * self.sxx + rows * rows, m * self.sxy + rows * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b), or None before any step. The spread of rows seen, as a weight, against a prior slope."""
        if self.w == 0:
            return None
        mx, my = self.sx / self.w, self.sy / self.w
        var = self.sxx - self.w * mx * mx  # weighted spread of the row counts
        cov = self.sxy - self.w * mx * my
        prior_b = PRIOR_ROW_SHARE * my
        prior_weight = 4.0  # as much as 4 steps one row apart
        b = max((cov + prior_weight * prior_b) / (var + prior_weight), 0.0)
        a = max(my - b * mx, 1e-6)
        return a, b


@dataclass
class SpecState:
    """A sequence's speculation history."""

    alpha: float = PRIOR_ALPHA


def choose_drafts(
    alphas: list[float], caps: list[int], base_rows: int, cost: tuple[float, float], per_position: float = 0.0
) -> list[int]:
    """Drafts per sequence that maximise expected tokens per second: greedy over alpha ** j, best first.

    alphas and caps per candidate sequence; base_rows: the step's query rows without drafts; cost (a, b) of the
    target step; per_position: seconds of one draft-model forward, paid once per drafted position (depth), for
    all the sequences that draft that deep together (0 for prompt lookup).
    """
    a, b = cost
    picks = [0] * len(alphas)
    tokens = float(len(alphas))
    seconds = a + b * base_rows
    depth = 0
    gains = sorted(
        ((alpha ** j, j, i) for i, (alpha, cap) in enumerate(zip(alphas, caps, strict=True))
         for j in range(1, cap + 1)),
        key=lambda g: (-g[0], g[1]),
    )
    for gain, j, i in gains:
        extra = b + (per_position if j > depth else 0.0)
        # Take it if (tokens + gain) / (seconds + extra) > tokens / seconds.
        if gain * seconds <= extra * tokens:
            continue  # a deeper position may be too dear where a shallow one of another sequence is not
        picks[i] += 1
        tokens += gain
        seconds += extra
        depth = max(depth, j)
    return picks


class SpeculativeDecoder:
    """Plans each step's drafts, fills them, verifies them, and counts."""

    def __init__(self, method: str, max_tokens: int, proposer):
        self.method = method
        self.proposer = proposer
        self.max_tokens = max_tokens
        self.cost = StepCost()
        self.counters = SpecCounters(accepted_per_pos=[0] * max_tokens)
        self.draft_probs: dict[int, torch.Tensor] = {}
        self.adaptive = True
        """False: every sequence drafts all it can (tests that must exercise verification)."""

    # -- before the step --------------------------------------------------------------------
    def plan(self, running: list[Sequence], max_model_len: int) -> None:
        """Set draft_token_ids on the running sequences that decode this step (empty for the others). A draft
        model's drafts are placeholders here, their count decided; fill() writes them once scheduled."""
        self.draft_probs.clear()
        decoding, caps = [], []
        base_rows = 0
        for seq in running:
            seq.draft_token_ids = []
            uncomputed = seq.num_uncomputed_tokens
            base_rows += uncomputed
            if uncomputed != 1:
                continue
            room = min(seq.params.max_tokens - len(seq.output_token_ids), max_model_len - seq.num_tokens) - 1
            cap = min(self.max_tokens, room)
            if cap > 0:
                decoding.append(seq)
                caps.append(cap)
        if not decoding:
            return
        fit = self.cost.fit()
        if fit is None and self.adaptive:
            return  # the first step measures plain decoding
        states = [self._state(s) for s in decoding]
        if self.proposer.needs_budget_first:
            proposals = None
            found = caps
            per_position = self.proposer.seconds_per_forward
        else:
            proposals = self.proposer.propose(decoding, caps)
            # Only what the proposer found can be drafted: a sequence without a match costs nothing.
            found = [len(p.tokens) for p in proposals]
            per_position = 0.0
        picks = (choose_drafts([s.alpha for s in states], found, base_rows, fit, per_position)
                 if self.adaptive else found)
        for i, (seq, state, k, n) in enumerate(zip(decoding, states, picks, found, strict=True)):
            if k:
                seq.draft_token_ids = proposals[i].tokens[:k] if proposals else [0] * k
                if proposals and proposals[i].probs is not None:
                    self.draft_probs[id(seq)] = proposals[i].probs[:k]
            elif n:
                state.alpha += ALPHA_RECOVERY * (PRIOR_ALPHA - state.alpha)

    def fill(self, scheduled: list[Sequence], generator: torch.Generator) -> None:
        """Draft-model tokens for the scheduled sequences that kept a draft (the scheduler may have cut it)."""
        if not self.proposer.needs_budget_first:
            return
        seqs = [s for s in scheduled if s.draft_token_ids]
        if not seqs:
            return
        proposals = self.proposer.propose(seqs, [len(s.draft_token_ids) for s in seqs], generator)
        for seq, proposal in zip(seqs, proposals, strict=True):
            seq.draft_token_ids = proposal.tokens
            if proposal.probs is not None:
                self.draft_probs[id(seq)] = proposal.probs

    @staticmethod
    def _state(seq: Sequence) -> SpecState:
        if seq.spec_state is None:
            seq.spec_state = SpecState()
        return seq.spec_state

    # -- after the forward ------------------------------------------------------------------
    def observe_step(self, rows: int, seconds: float) -> None:
        self.cost.observe(rows, seconds)

    def verify(self, logits: torch.Tensor, samplers: list[Sequence], sampler: Sampler) -> list[SampleResult]:
        """logits: 1 + len(draft_token_ids) rows per sequence, in samplers' order. Per sequence, the tokens
        it emits this step (accepted drafts and one of the target's) and their logprobs when asked."""
        spans, row = [], 0
        for seq in samplers:
            spans.append((row, row + 1 + len(seq.draft_token_ids)))
            row = spans[-1][1]
        sampled = [i for i, s in enumerate(samplers) if not s.params.greedy]
        probs: dict[int, torch.Tensor] = {}
        if sampled:
            rows = torch.cat([torch.arange(*spans[i]) for i in sampled])
            params = [samplers[i].params for i in sampled for _ in range(*spans[i])]
            all_probs = filtered_probs(logits[rows], params)
            at = 0
            for i in sampled:
                n = spans[i][1] - spans[i][0]
                probs[i] = all_probs[at : at + n]
                at += n
        results = []
        for i, seq in enumerate(samplers):
            rows_i = logits[spans[i][0] : spans[i][1]]
            drafts = seq.draft_token_ids
            if seq.params.greedy:
                tokens = rejection.verify_greedy(rows_i, drafts)
            else:
                tokens = rejection.verify_sampled(
                    probs[i], drafts, self.draft_probs.get(id(seq)), seq.generator or sampler.generator
                )
            self._count(seq, len(tokens) - 1)
            results.append(SampleResult(tokens, sampler.logprobs_at(rows_i, tokens, seq.params.logprobs)))
        return results

    def _count(self, seq: Sequence, accepted: int) -> None:
        c = self.counters
        drafted = len(seq.draft_token_ids)
        if not drafted:
            return
        c.num_drafts += 1
        c.num_draft_tokens += drafted
        c.num_accepted_tokens += accepted
        for j in range(accepted):
            c.accepted_per_pos[j] += 1
        state = self._state(seq)
        # Positions up to the first rejection were each a trial; those after it were never looked at.
        for j in range(min(accepted + 1, drafted)):
            state.alpha = ALPHA_MEMORY * state.alpha + (1 - ALPHA_MEMORY) * (1.0 if j < accepted else 0.0)
