"""Talking to a deployment's scorer replica: a `llmctl serve` of the reference revision, asked only through
OpenAI-compatible calls, so any server that implements them (vLLM does) can be the reference.

One sample costs: /tokenize of the prompt (the reference's chat template) and of two answers, one
completion (the reference's own answer to the same prompt with the same sampling parameters: the
baseline), and two prompt-scoring calls (/v1/completions with echo, logprobs and max_tokens 0).
Both answers are scored the same way, re-tokenized from their text, so the reference judging its own
answers is exactly the null case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from llmctl.controlplane.services.quality import Scores

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos")
DEFAULT_ANSWER_TOKENS = 256
"""The reference's answer budget when the sampled request set none (chat defaults to the whole context)."""


class ScoringError(Exception):
    """The scorer could not score a sample (unreachable, an error answer, an empty answer)."""


@dataclass(frozen=True)
class AnswerScore:
    mean_logprob: float
    top1: float


class Scorer:
    """Scores answers with the reference replica at `url` (scheme://host:port) serving `model`."""

    def __init__(self, client: httpx.Client, url: str, model: str) -> None:
        self.client, self.url, self.model = client, url.rstrip("/"), model

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(self.url + path, json={"model": self.model, **payload})
        except httpx.HTTPError as exc:
            raise ScoringError(f"scorer at {self.url} unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise ScoringError(f"scorer at {self.url}{path} answered {response.status_code}: "
                               f"{response.text[:300]}")
        return response.json()

    def prompt_ids(self, kind: str, request: dict[str, Any]) -> list[int]:
        if kind == "chat":
            body = {"messages": request.get("messages"), "add_generation_prompt": True}
        else:
            prompt = request.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
                prompt = prompt[0]
            body = {"prompt": prompt}
        return self._post("/tokenize", body)["tokens"]

    def text_ids(self, text: str) -> list[int]:
        return self._post("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"] if text else []

    def answer(self, prompt_ids: list[int], request: dict[str, Any]) -> str:
        """The reference's own answer to the prompt, sampled as the request asked."""
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_ANSWER_TOKENS
        params = {k: request[k] for k in SAMPLING_FIELDS if request.get(k) is not None}
        body = self._post("/v1/completions", {"prompt": prompt_ids, "max_tokens": int(limit), **params})
        return body["choices"][0]["text"]

    def score(self, prompt_ids: list[int], answer_ids: list[int]) -> AnswerScore:
        """The reference's mean log-likelihood per answer token and its top-1 agreement with the answer."""
        if not answer_ids:
            raise ScoringError("the answer is empty: nothing to score")
        body = self._post("/v1/completions", {"prompt": prompt_ids + answer_ids, "echo": True, "logprobs": 1,
                                              "max_tokens": 0})
        logprobs = body["choices"][0]["logprobs"]
        chosen = logprobs["token_logprobs"][-len(answer_ids):]
        tops = logprobs["top_logprobs"][-len(answer_ids):]
        if len(chosen) != len(answer_ids) or any(lp is None for lp in chosen):
            raise ScoringError(f"scorer returned {len(chosen)} log-probabilities for {len(answer_ids)} tokens")
        # The answer's token is the top-1 choice when no alternative is more likely (ties count as agreement).
        top1 = sum(lp >= max(top.values()) - 1e-6 for lp, top in zip(chosen, tops, strict=True))
        return AnswerScore(math.fsum(chosen) / len(chosen), top1 / len(chosen))

    def score_sample(self, kind: str, request: dict[str, Any], answer: str) -> Scores:
        prompt = self.prompt_ids(kind, request)
        served = self.text_ids(answer)
        candidate = self.score(prompt, served)
        baseline = self.score(prompt, self.text_ids(self.answer(prompt, request)))
        return Scores(served, candidate.mean_logprob, candidate.top1, baseline.mean_logprob, baseline.top1)
