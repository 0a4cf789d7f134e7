"""What the OpenAPI documents say the OpenAI-compatible routes answer: every status and its body.

Documentation only: the handlers build their answers as dicts and JSONResponses, and these models describe
them so that a client generated from /openapi.json, or a fuzzer checking answers against it
(tests/agent/test_server_fuzz.py, tests/controlplane/gateway/test_fuzz.py), reads the truth. Errors are
OpenAI's error body with a 400 where FastAPI would say 422, so FastAPI's own 422 entries are taken out.
Shared by `llmctl serve` and the gateway, which relays the server's answers.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Tokens(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class Health(BaseModel):
    status: str


_WHY = {
    400: "The request is malformed or asks for something this server does not do (message and param say what).",
    401: "Missing or invalid API key.",
    404: "No such model (or route).",
    408: "The request did not arrive within the server's read timeout.",
    413: "The request body is larger than the server accepts.",
    429: "A rate limit or the monthly token budget is exhausted; Retry-After says when to retry.",
    503: "Nothing can serve the request now (no ready replica, or the engine loop is not running).",
}

EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
"""With stream=true a generation answers server-sent events, each `data: <chunk JSON>`, then `data: [DONE]`."""


def responses(ok: type[BaseModel] | None, *errors: int, stream: bool = False,
              media_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses` for a route answering `ok` with 200 and OpenAI error bodies with `errors`."""
    if ok is None:
        answer: dict[str, Any] = {"content": {media_type: {"schema": {"type": "string"}}}}
    else:
        answer = {"model": ok} | ({"content": EVENT_STREAM} if stream else {})
    return {200: answer} | {status: {"model": ErrorBody, "description": _WHY[status]} for status in errors}


def finish_openapi(app: FastAPI, bodies: dict[str, type[BaseModel]] | None = None) -> None:
    """Drop the 422 entries FastAPI adds to every route with parameters (these servers answer 400), and
    document `bodies` (path -> model) as the JSON request bodies of POST routes that read theirs raw."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in (bodies or {}).items():
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            for route in schema.get("paths", {}).values():
                for operation in route.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
