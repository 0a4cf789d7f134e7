"""Request state inside the engine (Sequence) and what the engine hands back (RequestOutput)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from llmctl.agent.engine.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]]
    """(token id, token text, logprob) of the top alternatives, best first."""


@dataclass
class CompletionOutput:
    text: str
    """Everything generated so far (after stop-string trimming)."""
    token_ids: list[int]
    delta_text: str
    """Text added since the previous output of this request."""
    delta_token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    """Logprobs of the tokens in delta_token_ids, when asked for."""
    finish_reason: str | None
    """None while running; 'stop' or 'length' at the end; 'abort' when aborted."""


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def output(self) -> CompletionOutput:
        return self.outputs[0]


@dataclass(eq=False)
class Sequence:
    """One request's tokens and progress. Scheduler-visible state only: no tensors."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    status: SequenceStatus = SequenceStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    """Tokens whose KV is in the cache (prefix hits included)."""
    num_cached_tokens: int = 0
    """Prompt tokens that came from the prefix cache at the last admission."""
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    """Chained hashes of the sequence's leading full blocks that are computed."""
    finish_reason: str | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0
    # Set by the engine: the detokenizer.
    detokenizer: object | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    """Generated text, trimmed at a stop string once one is found."""
    num_sent_chars: int = 0
    num_sent_tokens: int = 0
    # Speculative decoding (engine/speculative.py): this step's draft, the sequence's acceptance, its n-grams.
    draft_token_ids: list[int] = field(default_factory=list)
    """Drafted tokens verified in this step, after the last computed token; never part of token_ids."""
    spec_state: object | None = None
    ngram_index: object | None = None
    draft_computed: int = 0
    """Tokens whose K/V the draft model has in its pool (draft_model.py)."""

    def token_at(self, index: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

    def token_slice(self, start: int, stop: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if stop <= n:
            return self.prompt_token_ids[start:stop]
        return (self.prompt_token_ids[start:] if start < n else []) + self.output_token_ids[
            max(start - n, 0) : stop - n
        ]

    def step_tokens(self, start: int, n: int) -> list[int]:
        """Tokens at positions [start, start + n), running on into the drafted tokens."""
        tokens = self.token_slice(start, min(start + n, self.num_tokens))
        extra = start + n - self.num_tokens
        return tokens + self.draft_token_ids[:extra] if extra > 0 else tokens

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens
