"""Every request field of OpenAI's /v1/completions and /v1/chat/completions, one by one, against a real server:
each either works, is accepted and ignored (it changes nothing in the answer), or gets a 400 naming it.
Nothing that changes what the answer means is dropped silently. The field lists come from the installed
`openai` package, so a newer schema fails the walk until its new fields are classified here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from llmctl.agent.openai_fields import IGNORED, UNSUPPORTED
from tests.factories import serve_app

MODEL = "tiny"
CHAT = [{"role": "user", "content": "Hello world!"}]
PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}
BASE = {
    "completion": {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0, "ignore_eos": True},
    "chat": {"model": MODEL, "messages": CHAT, "max_tokens": 2, "temperature": 0, "ignore_eos": True},
}


class Refused:
    """The 400 (or other status) a value gets: its message contains `message`, its param names the field."""

    def __init__(self, message: str, status: int = 400, param: str | None = "") -> None:
        self.message, self.status, self.param = message, status, param


OK = None
Check = Callable[[httpx.Response], bool]

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}

SAMPLING: dict[str, list[tuple[Any, Any]]] = {
    # Both endpoints' sampling fields, OpenAI's and vLLM's, that llmctl implements.
    "model": [(MODEL, OK), (None, OK), ("other", Refused("does not exist", 404))],
    "temperature": [(0.7, OK), (None, OK), (-1, Refused("temperature must be >= 0"))],
    "top_p": [(0.9, OK), (0, Refused("top_p must be in (0, 1]"))],
    "n": [(1, OK), (None, OK), (2, Refused("n=1"))],
    "seed": [(7, OK), (None, OK)],
    "stop": [("\n", OK), (["a", "b"], OK), ([""], Refused("Stop strings must not be empty"))],
    "stream": [(True, OK), (False, OK), ("yes", Refused("'stream'"))],
    "stream_options": [({"include_usage": True}, OK), ({"include_usage": "yes"}, Refused("'stream_options"))],
    "max_tokens": [(3, OK), (None, OK), (0, Refused("max_tokens must be at least 1"))],
    "top_k": [(5, OK), (-2, Refused("top_k must be"))],
    "min_p": [(0.1, OK), (2, Refused("min_p must be in [0, 1]"))],
    "ignore_eos": [(False, OK)],
    "stop_token_ids": [([5], OK), ([], OK)],
    "include_stop_str_in_output": [(True, OK), (False, OK)],
    # What llmctl does not implement: "off" is accepted, anything else is a 400 naming the field.
    "suffix": [(None, OK), ("", OK), (" END", Refused("suffix must be null"))],
    "best_of": [(None, OK), (1, OK), (2, Refused("best_of must be 1 or equal to n")),
                (True, Refused("best_of must be 1"))],
    "logit_bias": [(None, OK), ({}, OK), ({"50": 0}, OK), ({"50": 100}, Refused("logit_bias must be null or {}")),
                   ({"50": -100}, Refused("llmctl applies no per-token biases"))],
    "presence_penalty": [(None, OK), (0, OK), (0.0, OK), (0.5, Refused("presence_penalty must be null or 0"))],
    "frequency_penalty": [(None, OK), (0, OK), (-1.0, Refused("frequency_penalty must be null or 0"))],
    "tools": [(None, OK), ([], OK), ([TOOL], Refused("tools must be null or []"))],
    "tool_choice": [(None, OK), ("none", OK), ("auto", OK), ("required", Refused("tool_choice must be null")),
                    ({"type": "function", "function": {"name": "f"}}, Refused("no function calling"))],
    "functions": [(None, OK), ([], OK), ([TOOL["function"]], Refused("functions must be null or []"))],
    "function_call": [(None, OK), ("none", OK), ("auto", OK), ({"name": "f"}, Refused("function_call must be"))],
    "response_format": [(None, OK), ({"type": "text"}, OK),
                        ({"type": "json_object"}, Refused("response_format must be null or {\"type\": \"text\"}")),
                        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
                         Refused("does not constrain the output"))],
    "modalities": [(None, OK), (["text"], OK), (["text", "audio"], Refused("modalities must be null or"))],
    "audio": [(None, OK), ({"voice": "alloy", "format": "wav"}, Refused("audio must be null"))],
    "reasoning_effort": [(None, OK), ("none", OK), ("high", Refused("reasoning_effort must be null or"))],
    "verbosity": [(None, OK), ("medium", OK), ("low", Refused("verbosity must be null or \"medium\""))],
    "web_search_options": [(None, OK), ({}, Refused("web_search_options must be null"))],
    "moderation": [(None, OK), ({"model": "omni-moderation-latest"}, Refused("moderation must be null"))],
    "repetition_penalty": [(None, OK), (1, OK), (1.0, OK), (1.2, Refused("repetition_penalty must be null or 1"))],
    "min_tokens": [(None, OK), (0, OK), (4, Refused("min_tokens must be null or 0"))],
    "use_beam_search": [(None, OK), (False, OK), (True, Refused("use_beam_search must be null or false"))],
    "prompt_logprobs": [(None, OK), (1, Refused("prompt_logprobs must be null"))],
    "skip_special_tokens": [(None, OK), (True, OK), (False, Refused("skip_special_tokens must be null or true"))],
    "truncate_prompt_tokens": [(None, OK), (8, Refused("truncate_prompt_tokens must be null"))],
    "bad_words": [(None, OK), ([], OK), (["fox"], Refused("bad_words must be null or []"))],
    "allowed_token_ids": [(None, OK), ([], OK), ([5, 6], Refused("allowed_token_ids must be null or []"))],
    "guided_json": [(None, OK), ({"type": "object"}, Refused("guided_json must be null"))],
    "guided_regex": [(None, OK), ("[a-z]+", Refused("guided_regex must be null"))],
    "guided_choice": [(None, OK), (["yes", "no"], Refused("guided_choice must be null"))],
    "guided_grammar": [(None, OK), ("root ::= \"a\"", Refused("guided_grammar must be null"))],
    "structured_outputs": [(None, OK), ({"regex": "a+"}, Refused("structured_outputs must be null"))],
    "chat_template": [(None, OK), ("{{ messages }}", Refused("chat_template must be null"))],
    "chat_template_kwargs": [(None, OK), ({}, OK),
                             ({"enable_thinking": False}, Refused("chat_template_kwargs must be null or {}"))],
    "add_generation_prompt": [(None, OK), (True, OK), (False, Refused("add_generation_prompt must be null or"))],
    "continue_final_message": [(None, OK), (False, OK), (True, Refused("continue_final_message must be null"))],
    # Changes nothing in the answer: accepted whatever the value.
    "user": [("alice", OK)],
    "metadata": [({"team": "search"}, OK)],
    "store": [(True, OK)],
    "service_tier": [("flex", OK)],
    "safety_identifier": [("hash-of-alice", OK)],
    "prompt_cache_key": [("k1", OK)],
    "prompt_cache_options": [({"ttl": "1h"}, OK)],
    "prompt_cache_retention": [("24h", OK)],
    "prediction": [({"type": "content", "content": "Hello there"}, OK)],
    "parallel_tool_calls": [(True, OK), (False, OK)],
    # Neither OpenAI's nor llmctl's: accepted (and logged once).
    "x_not_a_field": [(1, OK)],
}

CASES: dict[str, dict[str, list[tuple[Any, Any]]]] = {
    "completion": SAMPLING | {
        "prompt": [("Hi there", OK), ([1, 2, 3], OK), (["Hi"], OK), (["a", "b"], Refused("Batched prompts"))],
        "echo": [(True, OK), (False, OK), ("yes", Refused("'echo'"))],
        "logprobs": [(0, OK), (5, OK), (20, OK), (21, Refused("logprobs must be in [0, 20]"))],
        "add_special_tokens": [(None, OK), (True, OK), (False, Refused("add_special_tokens must be null or"))],
    },
    "chat": SAMPLING | {
        "messages": [(CHAT, OK), ([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], OK),
                     ("hi", Refused("'messages'"))],
        "max_completion_tokens": [(3, OK), (None, OK), (0, Refused("max_completion_tokens must be at least 1"))],
        "logprobs": [(True, OK), (False, OK), (None, OK)],
        "top_logprobs": [(3, OK), (20, OK), (21, Refused("top_logprobs must be in [0, 20]"))],
        "echo": [(False, OK), (True, Refused("Chat completions do not take echo"))],
        "add_special_tokens": [(None, OK), (False, OK), (True, Refused("add_special_tokens must be null or"))],
    },
}
COMPANIONS = {("chat", "top_logprobs"): {"logprobs": True}}
"""Other fields a case needs to mean what it tests."""


WORKS: dict[tuple[str, str], tuple[Any, Check]] = {
    # The fields whose effect shows in one answer: for this value the case checks it, not only the 200.
    ("completion", "echo"): (True, lambda r: r.json()["choices"][0]["text"].startswith("Hello")),
    ("completion", "max_tokens"): (3, lambda r: r.json()["usage"]["completion_tokens"] == 3),
    ("completion", "logprobs"): (5, lambda r: len(r.json()["choices"][0]["logprobs"]["token_logprobs"]) == 2),
    ("completion", "stream"): (True, lambda r: r.text.endswith("data: [DONE]\n\n")),
    ("chat", "max_completion_tokens"): (3, lambda r: r.json()["usage"]["completion_tokens"] == 3),
    ("chat", "max_tokens"): (3, lambda r: r.json()["usage"]["completion_tokens"] == 3),
    ("chat", "top_logprobs"): (3, lambda r: all(len(c["top_logprobs"]) == 3
                                                 for c in r.json()["choices"][0]["logprobs"]["content"])),
    ("chat", "stream"): (True, lambda r: r.text.endswith("data: [DONE]\n\n")),
}


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[str]:
    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    config = EngineConfig(model=str(tiny_llama), dtype="float32", max_model_len=512, num_kv_blocks=128)
    with serve_app(build_app(AsyncEngine.from_config(config), MODEL)) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _openai_fields(module: Any) -> set[str]:
    params = module.CompletionCreateParamsStreaming
    return set(params.__required_keys__ | params.__optional_keys__)


def test_the_walk_covers_openais_schema_and_every_field_llmctl_classifies():
    assert _openai_fields(completion_create_params) - CASES["completion"].keys() == set()
    assert _openai_fields(chat_create_params) - CASES["chat"].keys() == set()
    for kind in PATHS:
        assert (UNSUPPORTED.keys() | IGNORED) - CASES[kind].keys() == set(), kind


@pytest.mark.parametrize(("kind", "field", "value", "expected"), [
    pytest.param(kind, field, value, expected, id=f"{kind}-{field}={value!r}")
    for kind, cases in CASES.items() for field, values in cases.items() for value, expected in values
])
def test_each_request_field_works_or_gets_a_400_naming_it(client, kind, field, value, expected):
    body = BASE[kind] | COMPANIONS.get((kind, field), {}) | {field: value}
    r = client.post(PATHS[kind], json=body)
    if expected is OK:
        assert r.status_code == 200, r.text
        works, check = WORKS.get((kind, field), (None, None))
        assert check is None or value != works or check(r), r.text
        return
    assert r.status_code == expected.status, r.text
    error = r.json()["error"]
    assert expected.message in error["message"], error
    assert error["param"] == (field if expected.param == "" else expected.param), error
    assert error["type"] == ("not_found_error" if expected.status == 404 else "invalid_request_error")


def test_a_refused_field_is_refused_before_a_stream_starts(client):
    r = client.post(PATHS["completion"], json=BASE["completion"] | {"stream": True, "best_of": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    assert r.json()["error"]["code"] == "unsupported_parameter"


def test_include_stop_str_in_output_keeps_the_stop_string(client):
    body = BASE["completion"] | {"max_tokens": 24}
    text = client.post(PATHS["completion"], json=body).json()["choices"][0]["text"]
    k = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[k : k + 2]
    cut = text[: text.index(stop)]
    for keep, want in ((False, cut), (True, cut + stop)):
        choice = client.post(PATHS["completion"], json=body | {"stop": stop, "include_stop_str_in_output": keep})
        assert (choice.json()["choices"][0]["text"], choice.json()["choices"][0]["finish_reason"]) == (want, "stop")


def test_an_unknown_field_is_accepted_and_logged_once_per_name(client, caplog):
    def warnings_about(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "llmctl.server" and repr(name) in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="llmctl.server"):
        for kind in ("completion", "chat", "completion"):
            body = BASE[kind] | {"x_llmctl_probe": True, "x_llmctl_other": 1, "user": "alice", "best_of": 1}
            assert client.post(PATHS[kind], json=body).status_code == 200
    assert len(warnings_about("x_llmctl_probe")) == 1 and len(warnings_about("x_llmctl_other")) == 1
    assert "unknown request field" in warnings_about("x_llmctl_probe")[0].getMessage()
    assert warnings_about("user") == warnings_about("best_of") == [], "known fields are not unknown"
