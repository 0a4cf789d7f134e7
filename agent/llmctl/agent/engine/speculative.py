"""Speculative decoding in the engine's step: how many tokens each sequence drafts, and what the verified step
hands back.

Drafting pays only where the tokens it adds outweigh what the extra query rows cost, and both vary: a proposer
that is right a third of the time is worth 4 drafts at batch 1 on a CPU, where a step costs about the same for
1 or 5 rows (it streams the weights), and next to nothing at batch 16, where each row adds a token's compute.
So each step decides, from numbers the engine measures:

- the step's cost by query rows: a curve measured at start-up (StepCost), scaled online by how the decode and
  verify steps since compare with it;
- acceptance: the chance that a step's first draft is accepted, and that a draft after an accepted one is.
  Tracked per sequence and shared per proposer key (prompt lookup: the matched n-gram's length, since a 4-token
  match is right far more often than a 1-token one); a sequence's own rates weigh more as it has more of them,
  and shared rates seen little are taken optimistically, so an untried key is tried. The j-th draft of a
  sequence then adds first x next ** (j - 1) tokens in expectation;
- for a draft model, one draft forward per drafted position (all the sequences that draft that deep share it),
  and for a sequence's first draft the catch-up of the context its draft K/V lacks (a whole prompt at first).

Drafts are taken best first while each one raises expected tokens per second. A sequence whose drafts keep
failing falls to 0 drafts: plain decoding, at plain decoding's cost. While it does not draft its own evidence
fades, so it is tried again when the shared rates say a draft like its next one tends to be right.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmctl.agent.engine import rejection
from llmctl.agent.engine.sampler import Sampler, SampleResult, filtered_probs
from llmctl.agent.engine.sequence import Sequence

PRIOR_FIRST = 0.5
"""Before any evidence: the chance that a sequence's first drafted token is accepted."""
PRIOR_NEXT = 0.7
"""... and that a drafted token after an accepted one is (drafts that start right tend to stay right)."""
SEQ_MEMORY = 0.9
"""A sequence's rates move 10% toward each verified position's outcome (1 accepted, 0 rejected)."""
SHARED_MEMORY = 0.98
SHRINK_TRIALS = 4.0
"""A sequence's own rates weigh m / (m + 4) against the shared ones after m verified positions."""
FORGET = 0.98
"""Per step a sequence does not draft, its own evidence counts 2% less: it drifts back to the shared rates."""
SCALE_MEMORY = 0.95
EXPLORE = 0.3
"""Optimism for rates seen little: + 0.3 / sqrt(1 + trials), so that a key no draft has tried yet is tried."""
MARGIN = 1.25
"""A draft must promise 25% more than it costs: the cost curve misses part of a real step (attention over long
contexts), and a draft that only breaks even is a risk for nothing."""
CURVE_ROWS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384)
KEEP_EVERY_DRAFT = False
"""True keeps a draft model that can never pay (tests that must verify drafts from a draft as big as the target)."""

log = logging.getLogger("llmctl.engine")


@dataclass
class SpecCounters:
    """vLLM's spec_decode series: drafts verified, tokens drafted, tokens accepted (in all and per position)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)


class StepCost:
    """Seconds of a target step by its query rows: a curve measured once at start-up (flat while the step streams
    the weights, then rising by a token's compute per row), scaled by how the steps since compare with it (the
    box may be slower or busier now)."""

    def __init__(self, points: list[tuple[int, float]]):
        self.rows = [r for r, _ in points]
        self.seconds = [t for _, t in points]
        self.scale = 1.0

    @classmethod
    def measure(cls, forward: Callable[[int], object], max_rows: int) -> StepCost:
        """forward(rows) runs one target forward of that many query rows; the best of 2 at each point."""
        points = []
        for rows in [r for r in CURVE_ROWS if r <= max_rows] or [1]:
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                forward(rows)
                best = min(best, time.perf_counter() - started)
            points.append((rows, best))
        # Noise must not make a row look free or negative: the curve only rises.
        for i in range(1, len(points)):
            points[i] = (points[i][0], max(points[i][1], points[i - 1][1]))
        return cls(points)

    def __call__(self, rows: float) -> float:
        r, t = self.rows, self.seconds
        if len(r) == 1:
            return self.scale * t[0] * max(rows, r[0]) / r[0]
        i = min(max(bisect.bisect_left(r, rows), 1), len(r) - 1)
        slope = (t[i] - t[i - 1]) / (r[i] - r[i - 1])
        return self.scale * max(t[i - 1] + slope * (rows - r[i - 1]), t[0])

    def observe(self, rows: int, seconds: float) -> None:
        unscaled = self(rows) / self.scale
        self.scale = SCALE_MEMORY * self.scale + (1 - SCALE_MEMORY) * seconds / unscaled


@dataclass
class Acceptance:
    """How often drafts are accepted: the first of a step's drafts, and one after an accepted one."""

    first: float = PRIOR_FIRST
    next: float = PRIOR_NEXT
    first_trials: float = 0.0
    next_trials: float = 0.0

    def record(self, drafted: int, accepted: int, memory: float) -> None:
        """A verified draft of `drafted` tokens whose first `accepted` were accepted. Positions after the first
        rejection were never looked at, so they are no evidence."""
        self.first = memory * self.first + (1 - memory) * (1.0 if accepted else 0.0)
        self.first_trials += 1
        for j in range(1, min(accepted + 1, drafted)):
            self.next = memory * self.next + (1 - memory) * (1.0 if j < accepted else 0.0)
            self.next_trials += 1


@dataclass
class SpecState:
    """A sequence's speculation history: its own acceptance, and the proposer's key of its current draft."""

    own: Acceptance = field(default_factory=Acceptance)
    key: int = 0


def blend(own: float, trials: float, shared: float) -> float:
    w = trials / (trials + SHRINK_TRIALS)
    return w * own + (1 - w) * shared


def expected_tokens(own: Acceptance, shared: Acceptance, cap: int) -> list[float]:
    """Expected accepted tokens of drafts 1..cap: first x next ** (j - 1), each rate shrunk toward the shared
    one, which is taken optimistically while it rests on few trials."""
    first = blend(own.first, own.first_trials, min(1.0, shared.first + EXPLORE / math.sqrt(1 + shared.first_trials)))
    nxt = blend(own.next, own.next_trials, min(1.0, shared.next + EXPLORE / math.sqrt(1 + shared.next_trials)))
    return [first * nxt ** (j - 1) for j in range(1, cap + 1)]


def choose_drafts(
    expected: list[list[float]], base_rows: int, cost: Callable[[float], float], per_position: float = 0.0,
    setup: list[float] | None = None,
) -> list[int]:
    """Drafts per sequence that maximise expected tokens per second, best first.

    expected[i][j - 1]: what sequence i's j-th draft adds in expectation (non-increasing in j); base_rows: the
    step's query rows without drafts; cost(rows): seconds of a target step; per_position: seconds of one
    draft-model forward, paid once per drafted position (depth) for all the sequences that draft that deep
    together (0 for prompt lookup); setup[i]: seconds sequence i's first draft costs on top (a draft model
    catching up on its context).
    """
    picks = [0] * len(expected)
    tokens = float(len(expected))
    rows = base_rows
    seconds = cost(rows)
    depth = 0
    gains = sorted(((g, j, i) for i, row in enumerate(expected) for j, g in enumerate(row, start=1)),
                   key=lambda g: (-g[0], g[1]))
    for gain, j, i in gains:
        if j != picks[i] + 1:
            continue  # a sequence's drafts are a prefix: its earlier one was not worth it
        extra = MARGIN * (cost(rows + 1) - cost(rows) + (per_position if j > depth else 0.0)
                          + (setup[i] if setup and j == 1 else 0.0))
        # Take it if (tokens + gain) / (seconds + extra) > tokens / seconds.
        if gain * seconds <= extra * tokens:
            continue  # a deeper position may be too dear where a shallow one of another sequence is not
        picks[i] = j
        tokens += gain
        seconds += extra
        rows += 1
        depth = max(depth, j)
    return picks


class SpeculativeDecoder:
    """Plans each step's drafts, fills them, verifies them, and counts."""

    def __init__(self, max_tokens: int, proposer, cost: StepCost):
        self.proposer = proposer
        self.max_tokens = max_tokens
        self.cost = cost
        self.counters = SpecCounters(accepted_per_pos=[0] * max_tokens)
        self.draft_probs: dict[int, torch.Tensor] = {}
        self.shared: dict[int, Acceptance] = {}
        """Acceptance over all sequences, per proposer key (prompt lookup: the matched n-gram's length)."""
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
        states = [self._state(s) for s in decoding]
        if self.proposer.needs_budget_first:
            proposals = None
            found = caps
            per_position = self.proposer.seconds_per_forward
            setup = [self.proposer.catch_up_seconds(seq) for seq in decoding]
        else:
            proposals = self.proposer.propose(decoding, caps)
            # Only what the proposer found can be drafted: a sequence without a match costs nothing.
            found = [len(p.tokens) for p in proposals]
            per_position, setup = 0.0, None
        for i, state in enumerate(states):
            state.key = proposals[i].key if proposals else 0
        if self.adaptive:
            expected = [expected_tokens(st.own, self._shared(st.key), n) for st, n in zip(states, found, strict=True)]
            picks = choose_drafts(expected, base_rows, self.cost, per_position, setup)
        else:
            picks = found
        for i, (seq, state, k) in enumerate(zip(decoding, states, picks, strict=True)):
            if k:
                seq.draft_token_ids = proposals[i].tokens[:k] if proposals else [0] * k
                if proposals and proposals[i].probs is not None:
                    self.draft_probs[id(seq)] = proposals[i].probs[:k]
            else:
                state.own.first_trials *= FORGET
                state.own.next_trials *= FORGET

    def _shared(self, key: int) -> Acceptance:
        if key not in self.shared:
            self.shared[key] = Acceptance()
        return self.shared[key]

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
            elif seq.params.seed is not None:
                tokens = rejection.verify_coupled(probs[i], drafts, seq.params.seed, seq.num_tokens)
            else:
                tokens = rejection.verify_sampled(probs[i], drafts, self.draft_probs.get(id(seq)), sampler.generator)
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
        state.own.record(drafted, accepted, SEQ_MEMORY)
        self._shared(state.key).record(drafted, accepted, SHARED_MEMORY)


def draft_can_pay(seconds_per_draft: float, cost: StepCost) -> bool:
    """Whether a draft model is cheap enough to ever be worth a draft. A drafted token adds at most one token,
    and at batch 1 costs a draft forward plus a row of the target's step, so choose_drafts takes none while
    MARGIN x the draft forward reaches the target's one-row step; at larger batches the draft's forward grows
    with its rows as the target's does. A draft as big as the target (or a 4-bit copy that runs no faster) is
    such a model: kept, it would only hold memory and planning time."""
    return MARGIN * seconds_per_draft < cost(1)


def make_speculator(config, draft, runner, dtype: torch.dtype) -> SpeculativeDecoder | None:
    """The engine's speculator: its proposer (prompt lookup, or the loaded draft model with a pool of the target's
    blocks) and the step-cost curve measured now through the target's runner. None, with a warning, for a draft
    model that cannot pay (draft_can_pay): the engine then decodes plainly, as the budget would have anyway."""
    if draft is not None:
        from llmctl.agent.engine.draft_model import DraftModelProposer

        num_blocks = runner.kv_caches[0].k.shape[0]
        proposer = DraftModelProposer(draft, num_blocks, config.block_size, dtype, config.device)
    else:
        from llmctl.agent.engine.proposers import NgramProposer

        proposer = NgramProposer(config.ngram_min, config.ngram_max)

    def forward(rows: int) -> None:
        # Chunks of at most 16 tokens, as a step's verified drafts come: rows of linears and logits, short attention.
        runner.score([[(i * 7 + 11) % 1000 for i in range(n)] for n in [16] * (rows // 16) + [rows % 16] if n])

    max_rows = min(config.max_num_batched_tokens, config.max_num_seqs * (1 + config.num_speculative_tokens))
    cost = StepCost.measure(forward, max_rows)
    if draft is not None and not KEEP_EVERY_DRAFT and not draft_can_pay(proposer.seconds_per_forward, cost):
        log.warning(
            "speculative decoding off: a forward of the draft model (%s) takes %.1f ms, %.0f%% of the target's "
            "one-row step (%.1f ms), so no draft could pay for itself; use a draft at most %.0f%% as costly",
            config.speculative_model or f"{config.model} (4-bit AWQ)", 1e3 * proposer.seconds_per_forward,
            100 * proposer.seconds_per_forward / cost(1), 1e3 * cost(1), 100 / MARGIN,
        )
        return None
    return SpeculativeDecoder(config.num_speculative_tokens, proposer, cost)
