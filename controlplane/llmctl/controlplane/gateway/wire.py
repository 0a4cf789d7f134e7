"""The OpenAI wire format as the gateway needs it: request bodies, error bodies, and the SSE usage filter.

The gateway does not validate sampling fields: the engine server behind it does, and its 400s pass
through unchanged. The gateway only needs the model, whether the request streams, and enough of the
prompt to estimate its tokens and key its routing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import JSONResponse

from llmctl.controlplane.errors import ControlPlaneError, InvalidArgument
from llmctl.controlplane.gateway.ratelimit import RateLimited
from llmctl.controlplane.gateway.routing import ModelNotFound, prompt_text

DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 256}
"""Completion budget assumed for the up-front tpm charge when a request sets none. Completions default to
16 tokens upstream; chat defaults to the rest of the context, which the gateway does not know, so it
charges a typical answer and settles to the real count afterwards."""

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; it must name a model."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"Malformed JSON body: {exc}") from None
    except RecursionError:  # json's C scanner gives up on deep nesting (about 1000 levels) with this
        raise InvalidArgument("Malformed JSON body: nested too deeply.") from None
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidArgument("The request must name a 'model' (the deployment to use), as a string.")
    return body


def wants_stream(body: dict[str, Any]) -> bool:
    return body.get("stream") is True


def client_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def upstream_body(body: dict[str, Any], raw: bytes) -> bytes:
    """What to send upstream: the client's bytes, except that streams always ask for the final usage chunk
    (the gateway bills from it). A malformed stream_options is left for the server to reject."""
    if not wants_stream(body) or client_wants_usage(body):
        return raw
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return raw
    return json.dumps({**body, "stream_options": {**(options or {}), "include_usage": True}}).encode()


def estimate_prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    """Token ids count as themselves; text as one token per 4 characters."""
    prompt = body.get("prompt")
    if kind == "completion" and isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]
        if all(isinstance(t, int) for t in prompt):
            return len(prompt)
    return math.ceil(len(prompt_text(kind, body)) / 4)


def estimate_tokens(kind: str, body: dict[str, Any]) -> int:
    """The up-front tpm charge: the completion budget plus the prompt estimate."""
    limit = body.get("max_completion_tokens") if kind == "chat" else None
    if limit is None:
        limit = body.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        limit = DEFAULT_MAX_TOKENS[kind]
    return limit + estimate_prompt_tokens(kind, body)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(exc: ControlPlaneError) -> JSONResponse:
    """An OpenAI-style error; 429s and 503s that know when to retry carry Retry-After in whole seconds, rounded
    up."""
    status, headers, code = exc.http_status, {}, None
    if status == 401:
        code = "invalid_api_key"
    elif isinstance(exc, ModelNotFound):
        code = "model_not_found"
    elif isinstance(exc, RateLimited):
        code = "insufficient_quota" if exc.limit == "monthly_tokens" else "rate_limit_exceeded"
    if status in (429, 503) and getattr(exc, "retry_after", None) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(error_body(status, exc.message, code), status_code=status, headers=headers)


def sse_event(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


class UsageFilter:
    """Watches an SSE stream for the usage chunk, and hides it from clients that did not ask for it.

    Bytes go out as soon as an event is complete; nothing is buffered beyond the event being read.
    Clients that asked for usage get the upstream bytes verbatim. The others get the stream they would
    have got without include_usage: no final usage-only chunk and no `"usage": null` on every chunk.
    """

    def __init__(self, forward_usage: bool, collect_text: bool = False) -> None:
        self.forward_usage = forward_usage
        self.usage: dict[str, Any] | None = None
        self.content_chunks = 0
        self.texts: list[str] | None = [] if collect_text else None
        """The content deltas of the first choice, when asked to collect them (a quality sample)."""
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        self._pending += data.replace(b"\r\n", b"\n")
        *events, self._pending = self._pending.split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        try:
            obj = json.loads(data) if data and data != b"[DONE]" else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if not isinstance(obj, dict):
            return event + b"\n\n"
        if obj.get("usage"):
            self.usage = obj["usage"]
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            delta = choices[0].get("delta")
            text = choices[0].get("text") or (delta.get("content") if isinstance(delta, dict) else None)
            self.content_chunks += bool(text)
            if self.texts is not None and isinstance(text, str) and choices[0].get("index", 0) == 0:
                self.texts.append(text)
        if self.forward_usage or "usage" not in obj:
            return event + b"\n\n"
        if choices == [] and obj["usage"]:
            return b""
        del obj["usage"]
        return sse_event(obj)
