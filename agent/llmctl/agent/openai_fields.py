"""Request fields the server does not implement, and what it does with each (table: docs/engine-api.md).

A field that would change what the answer means is refused with a 400 naming it, unless its value means
"off" (`logit_bias: {}`, `presence_penalty: 0`, `best_of: 1`): a client must never get an answer computed
without what it asked for and no sign of it. Fields that change nothing in the answer (`user`, `metadata`,
`store`, ...) are accepted and ignored. A field outside OpenAI's schema and ours is accepted and logged
once per name, so a typo or a newer client shows up in the log without flooding it.

The fields the server does implement are the request models' own (openai_protocol.py); these are the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from llmctl.agent.openai_protocol import ApiError, CompletionRequest, SamplingRequest

logger = logging.getLogger("llmctl.server")

Neutral = Callable[[Any, SamplingRequest], bool]
"""Whether a field's JSON value (given the whole request) means "off", so ignoring it changes nothing."""


def _equals(*values: Any) -> Neutral:
    """null, or one of values with the same JSON type (true is not 1, 0.0 is 0)."""
    def neutral(v: Any, _: SamplingRequest) -> bool:
        return v is None or any(v == x and isinstance(v, bool) == isinstance(x, bool) for x in values)
    return neutral


def _empty(v: Any, _: SamplingRequest) -> bool:
    return v is None or (isinstance(v, list | dict) and not v)


def _zero_biases(v: Any, _: SamplingRequest) -> bool:
    return v is None or (isinstance(v, dict) and all(b == 0 and not isinstance(b, bool) for b in v.values()))


def _no_extra_candidates(v: Any, body: SamplingRequest) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v in (1, body.n or 1))


def _this_endpoints_default(v: Any, body: SamplingRequest) -> bool:
    # vLLM's defaults: a completions prompt gets the tokenizer's special tokens, chat leaves them to the template.
    return v is None or v is isinstance(body, CompletionRequest)


_NO_TOOLS = "llmctl does no function calling"
_UNCONSTRAINED = "llmctl does not constrain decoding"

UNSUPPORTED: dict[str, tuple[Neutral, str]] = {
    # OpenAI's schema
    "suffix": (_equals(""), "suffix must be null or \"\": llmctl does not insert a completion before a suffix "
               "(fill-in-the-middle)."),
    "best_of": (_no_extra_candidates, "best_of must be 1 or equal to n; llmctl does not generate extra "
                "candidates to pick the best from."),
    "logit_bias": (_zero_biases, "logit_bias must be null or {} (or only zero biases): llmctl applies no "
                   "per-token biases."),
    "presence_penalty": (_equals(0), "presence_penalty must be null or 0: llmctl applies no repetition "
                         "penalties."),
    "frequency_penalty": (_equals(0), "frequency_penalty must be null or 0: llmctl applies no repetition "
                          "penalties."),
    "tools": (_empty, f"tools must be null or []: {_NO_TOOLS}."),
    "tool_choice": (_equals("none", "auto"), f"tool_choice must be null, \"none\" or \"auto\": {_NO_TOOLS}."),
    "functions": (_empty, f"functions must be null or []: {_NO_TOOLS}."),
    "function_call": (_equals("none", "auto"), f"function_call must be null, \"none\" or \"auto\": {_NO_TOOLS}."),
    "response_format": (lambda v, _: v is None or v == {"type": "text"}, "response_format must be null or "
                        "{\"type\": \"text\"}: llmctl does not constrain the output to JSON or a schema."),
    "modalities": (lambda v, _: v is None or v == ["text"], "modalities must be null or [\"text\"]: llmctl "
                   "generates text only."),
    "audio": (_equals(), "audio must be null: llmctl generates text only."),
    "reasoning_effort": (_equals("none"), "reasoning_effort must be null or \"none\": llmctl's models take no "
                         "reasoning budget."),
    "verbosity": (_equals("medium"), "verbosity must be null or \"medium\": llmctl does not steer the answer's "
                  "length by verbosity; use max_tokens."),
    "web_search_options": (_equals(), "web_search_options must be null: llmctl does not search the web."),
    "moderation": (_equals(), "moderation must be null: llmctl does not moderate inputs or outputs."),
    # vLLM's extensions that change the answer
    "repetition_penalty": (_equals(1), "repetition_penalty must be null or 1: llmctl applies no repetition "
                           "penalties."),
    "min_tokens": (_equals(0), "min_tokens must be null or 0: llmctl does not hold off the end of sequence; "
                   "ignore_eos=true with max_tokens generates exactly max_tokens."),
    "use_beam_search": (_equals(False), "use_beam_search must be null or false: llmctl samples one sequence."),
    "prompt_logprobs": (_equals(), "prompt_logprobs must be null; to score a prompt, send it to /v1/completions "
                        "with echo=true, logprobs=N and max_tokens=0."),
    "skip_special_tokens": (_equals(True), "skip_special_tokens must be null or true: llmctl always leaves "
                            "special tokens out of the text."),
    "add_special_tokens": (_this_endpoints_default, "add_special_tokens must be null or the endpoint's own: "
                           "true for /v1/completions, false for chat (the chat template places them)."),
    "truncate_prompt_tokens": (_equals(), "truncate_prompt_tokens must be null: llmctl never truncates a prompt."),
    "bad_words": (_empty, "bad_words must be null or []: llmctl bans no words."),
    "allowed_token_ids": (_empty, f"allowed_token_ids must be null or []: {_UNCONSTRAINED}."),
    **{name: (_equals(), f"{name} must be null: {_UNCONSTRAINED}.")
       for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")},
    "chat_template": (_equals(), "chat_template must be null: llmctl applies the model's own chat template."),
    "chat_template_kwargs": (_empty, "chat_template_kwargs must be null or {}: llmctl applies the chat template "
                             "without extra arguments."),
    "add_generation_prompt": (_equals(True), "add_generation_prompt must be null or true: a chat completion "
                              "always opens the assistant's turn."),
    "continue_final_message": (_equals(False), "continue_final_message must be null or false: a chat "
                               "completion always opens a new assistant turn."),
}
"""Field -> (which values mean "off", the 400's message for the others)."""

IGNORED = frozenset({
    "user", "metadata", "store", "service_tier", "safety_identifier",  # bookkeeping on OpenAI's side
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",  # the prefix cache is automatic
    "prediction",  # only speeds OpenAI up; the answer is the model's own either way
    "parallel_tool_calls",  # only means something with tools, which are refused
})
"""Fields that change nothing in the answer: accepted whatever their value."""


def check_fields(body: SamplingRequest) -> None:
    """Refuse a request that sets a field the server does not implement to anything but "off"."""
    extra = body.model_extra or {}
    for name, value in extra.items():
        rule = UNSUPPORTED.get(name)
        if rule is not None and not rule[0](value, body):
            raise ApiError(400, rule[1], name, "unsupported_parameter")


class UnknownFields:
    """Logs each request field that neither OpenAI's schema nor llmctl knows, once per name."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def note(self, body: SamplingRequest, route: str) -> None:
        for name in (body.model_extra or {}).keys() - UNSUPPORTED.keys() - IGNORED - self.seen:
            self.seen.add(name)
            logger.warning("ignoring unknown request field %r (first seen on %s; logged once per field)",
                           name, route)
