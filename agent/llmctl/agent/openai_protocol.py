"""OpenAI wire format for the server: request bodies (strict pydantic), error bodies, response pieces."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from llmctl.agent.engine.sequence import RequestOutput, TokenLogprob


MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on chat's top_logprobs, and SamplingParams' on logprobs."""


# ---- request bodies. strict: a wrong JSON type is a 400, never silently coerced ("5" is not 5).
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingRequest(_Body):
    # extra="allow": the fields not declared here land in model_extra, where openai_fields.py refuses the ones
    # that would change the answer and logs the unknown ones.
    model_config = ConfigDict(strict=True, extra="allow")
    # Optional throughout: many clients send an explicit null for "use the default".
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    """vLLM's: keep the stop string that ended the text at its end."""
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    """Put the prompt before the completion, in the text and (with logprobs) in the logprobs."""


class ContentPart(_Body):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class ChatMessage(_Body):
    model_config = ConfigDict(strict=True, extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    echo: bool | None = None
    """Read only to refuse it: echo is a legacy-completions feature here."""


class TokenizeRequest(_Body):
    """vLLM's /tokenize: a prompt (text or ids), or chat messages through the model's chat template."""

    model: str | None = None
    prompt: str | list[int] | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


class ApiError(Exception):
    """An error that becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 499: "invalid_request_error"}
"""OpenAI's error type by HTTP status; any other status is a server_error."""


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line naming the offending field, and the field, from pydantic's error list."""
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return f"Malformed JSON body: {detail} (at position {first['loc'][-1]})", None
    # Union members add their type name to loc ("prompt", "list[int]", 0); keep only the field path.
    path = [str(p) for p in first["loc"][1:] if isinstance(p, int) or p in FIELD_NAMES]
    field = ".".join(path) or "body"
    same = [e["msg"] for e in errors if [str(p) for p in e["loc"][1:2]] == path[:1]]
    msgs = " or ".join(dict.fromkeys(same)) if len(same) > 1 else first["msg"]
    return f"Invalid value for '{field}': {msgs}", (path[0] if path else None)


FIELD_NAMES = {
    name
    for model in (CompletionRequest, ChatCompletionRequest, ChatMessage, ContentPart, StreamOptions)
    for name in model.model_fields
}


# ---- response pieces
def completion_logprobs(
    lps: list[TokenLogprob], text_offset: int, first_token: str | None = None
) -> dict[str, Any]:
    """The legacy completions logprobs object; top alternatives include the sampled token, like vLLM.

    first_token: a token before lps that has no logprob (an echoed prompt's first: nothing precedes it);
    its logprob and top alternatives are null, as in OpenAI's and vLLM's answers.
    """
    tokens = ([] if first_token is None else [first_token]) + [lp.token for lp in lps]
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    lead: list[Any] = [] if first_token is None else [None]
    return {
        "tokens": tokens,
        "token_logprobs": lead + [lp.logprob for lp in lps],
        "top_logprobs": lead + [_top_by_text(lp) for lp in lps],
        "text_offset": offsets,
    }


def _top_by_text(lp: TokenLogprob) -> dict[str, float]:
    """Keyed by text, so tokens that decode alike collapse: the best of them keeps its value (lp.top is
    best first), except that the token's own value always shows under its own text."""
    top: dict[str, float] = {}
    for _, text, value in lp.top:
        top.setdefault(text, value)
    top[lp.token] = lp.logprob
    return top


def chat_logprobs(lps: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [entry(lp.token, lp.logprob) | {"top_logprobs": [entry(t, v) for _, t, v in lp.top[:top_n]]}
               for lp in lps]
    return {"content": content, "refusal": None}


def usage(prompt: int, out: RequestOutput | None) -> dict[str, Any]:
    """Token counts of a request with `prompt` prompt tokens; out None: nothing was generated."""
    completion, cached = (0, 0) if out is None else (len(out.output.token_ids), out.num_cached_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
