"""Prompt scoring in `llmctl serve`: /v1/completions with echo, logprobs and max_tokens 0, end to end on a
real uvicorn over a tiny random Llama (and SmolLM2 once), checked against LLMEngine.score."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

from llmctl.agent.engine.async_engine import AsyncEngine, EngineDeadError
from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.threads import run_in_fresh_thread
from tests.factories import make_tiny_llama

MODEL = "tiny"
CONTEXT = 256
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Paged attention stores keys", "Caf\u00e9 \u65e5\u672c"]
CHAT = [{"role": "user", "content": "Hello world!"}]


@contextmanager
def serving(config: EngineConfig, name: str) -> Iterator[SimpleNamespace]:
    """A uvicorn serving `config` on a loopback port until the block ends; the app's lifespan runs the engine."""
    import uvicorn

    from llmctl.agent.server import build_app

    engine = AsyncEngine.from_config(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(build_app(engine, name), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}", engine=engine, config=config)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-scoring"), max_position_embeddings=CONTEXT)
    config = EngineConfig(model=str(path), dtype="float32", max_model_len=CONTEXT, num_kv_blocks=128)
    with serving(config, MODEL) as srv:
        yield srv


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def post(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def score(client: httpx.Client, prompt: str | list[int], logprobs: int = 5, model: str = MODEL) -> dict:
    body = {"model": model, "prompt": prompt, "echo": True, "logprobs": logprobs, "max_tokens": 0}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def counts(usage: dict) -> tuple[int, int]:
    """Prompt and completion tokens; cached_tokens depends on what ran before (the prefix cache)."""
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def assert_same_logprobs(got: dict, want: dict) -> None:
    """Same tokens and offsets, values within 1e-4: a request repeated over the prefix cache reads the prompt
    KV from the cache instead of computing it, which may change the last bits."""
    assert (got["tokens"], got["text_offset"]) == (want["tokens"], want["text_offset"])
    assert got["token_logprobs"] == pytest.approx(want["token_logprobs"], abs=1e-4)
    for top, expected in zip(got["top_logprobs"], want["top_logprobs"], strict=True):
        assert top == (None if expected is None else pytest.approx(expected, abs=1e-4))


def reference_logprobs(config: EngineConfig, ids: list[int]) -> torch.Tensor:
    """log_softmax of LLMEngine.score([ids]) on a fresh engine of the same config: [len(ids), vocab].

    In a thread of its own, so its OpenMP team ends with it (see agent/engine/threads.py)."""
    return run_in_fresh_thread(lambda: torch.log_softmax(LLMEngine(config).score([ids])[0], -1))


def assert_matches_score(data: dict, ids: list[int], ref: torch.Tensor, tokenizer, top_n: int) -> None:
    lp = data["choices"][0]["logprobs"]
    assert lp["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        expected = ref[i - 1]  # position i - 1 predicts token i
        assert abs(lp["token_logprobs"][i] - float(expected[ids[i]])) < 1e-4, i
        top, best = lp["top_logprobs"][i], tokenizer.decode([int(expected.argmax())])
        # Keyed by text, so alternatives that decode alike collapse to the best of them, except that the
        # prompt token's own value shows under its text (which the argmax may share: byte tokens are "\ufffd").
        assert top[lp["tokens"][i]] == lp["token_logprobs"][i] and len(top) <= top_n + 1
        if best != lp["tokens"][i] or ids[i] == int(expected.argmax()):
            assert max(top, key=top.get) == best, i
            assert abs(top[best] - float(expected.max())) < 1e-4, i
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets


@pytest.mark.parametrize("prompt", PROMPTS)
def test_echo_logprobs_match_the_engines_own_scoring(client, server, prompt):
    engine = server.engine.engine
    ids = engine.tokenize(prompt)
    data = score(client, prompt, logprobs=5)
    (choice,) = data["choices"]
    assert data["object"] == "text_completion" and data["model"] == MODEL
    assert (choice["text"], choice["finish_reason"]) == (prompt, "length")
    assert data["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids),
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert_matches_score(data, ids, reference_logprobs(server.config, ids), engine.tokenizer, top_n=5)


def test_token_id_prompts_score_alike_and_echo_as_decoded_text(client, server):
    ids = server.engine.engine.tokenize(PROMPTS[1])
    by_text, by_ids = score(client, PROMPTS[1]), score(client, ids)
    assert by_ids["choices"][0]["text"] == server.engine.engine.tokenizer.decode(ids)
    assert by_ids["choices"][0]["logprobs"] == by_text["choices"][0]["logprobs"]
    assert score(client, [ids])["choices"][0]["logprobs"] == by_text["choices"][0]["logprobs"]


def test_a_one_token_prompt_has_only_its_null_entry(client, server):
    ids = server.engine.engine.tokenize("The")[:1]
    lp = score(client, ids)["choices"][0]["logprobs"]
    assert lp == {"tokens": [server.engine.engine.tokenizer.decode(ids)], "token_logprobs": [None],
                  "top_logprobs": [None], "text_offset": [0]}


def test_logprobs_zero_gives_each_prompt_token_alone(client):
    lp = score(client, PROMPTS[0], logprobs=0)["choices"][0]["logprobs"]
    assert all(top == {token: value} for token, value, top in
               zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True))


def test_echo_without_logprobs_returns_the_prompt_text_only(client):
    data = post(client, prompt=PROMPTS[0], echo=True, max_tokens=0)
    assert data["choices"][0]["text"] == PROMPTS[0] and data["choices"][0]["logprobs"] is None


def test_scoring_on_smollm2_matches_score(smollm2_path: Path):
    config = EngineConfig(model=str(smollm2_path), dtype="float32", num_kv_blocks=16)
    prompt = "The capital of France is Paris, and the capital of Italy is"
    with serving(config, "smollm2") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        data = score(c, prompt, logprobs=3, model="smollm2")
        ids = srv.engine.engine.tokenize(prompt)
        tokenizer = srv.engine.engine.tokenizer
    ref = reference_logprobs(config, ids)
    assert_matches_score(data, ids, ref, tokenizer, top_n=3)
    # A trained model: " Paris" after "The capital of France is" is its top guess.
    paris = ids.index(tokenizer.encode(" Paris")[0])
    assert max(data["choices"][0]["logprobs"]["top_logprobs"][paris].items(), key=lambda kv: kv[1])[0] == " Paris"


def test_official_openai_client_scores_a_prompt(server):
    import openai

    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    comp = oai.completions.create(model=MODEL, prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=0)
    lp = comp.choices[0].logprobs
    ids = server.engine.engine.tokenize(PROMPTS[0])
    assert comp.choices[0].text == PROMPTS[0] and comp.usage.completion_tokens == 0
    assert len(lp.token_logprobs) == len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    with pytest.raises(openai.BadRequestError, match="only with echo=true"):
        oai.completions.create(model=MODEL, prompt=PROMPTS[0], logprobs=1, max_tokens=0)


def test_echo_with_generation_puts_the_prompt_before_the_greedy_completion(client, server):
    body = {"prompt": PROMPTS[0], "max_tokens": 6, "logprobs": 2, "ignore_eos": True}
    plain, echoed = post(client, **body), post(client, **body, echo=True)
    scored = score(client, PROMPTS[0], logprobs=2)["choices"][0]["logprobs"]
    n = len(server.engine.engine.tokenize(PROMPTS[0]))
    choice, lp, gen = echoed["choices"][0], echoed["choices"][0]["logprobs"], plain["choices"][0]["logprobs"]
    assert choice["text"] == PROMPTS[0] + plain["choices"][0]["text"]
    assert choice["finish_reason"] == "length"
    assert counts(echoed["usage"]) == counts(plain["usage"]) == (n, 6)
    shift = sum(map(len, scored["tokens"]))
    assert_same_logprobs(lp, {"tokens": scored["tokens"] + gen["tokens"],
                              "token_logprobs": scored["token_logprobs"] + gen["token_logprobs"],
                              "top_logprobs": scored["top_logprobs"] + gen["top_logprobs"],
                              "text_offset": scored["text_offset"] + [shift + o for o in gen["text_offset"]]})


def stream(client: httpx.Client, body: dict) -> list[dict]:
    with client.stream("POST", "/v1/completions", json={"model": MODEL, "temperature": 0, **body,
                                                          "stream": True}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


def test_echo_streams_the_prompt_first_then_the_completion(client):
    body = {"prompt": PROMPTS[1], "max_tokens": 8, "logprobs": 3, "ignore_eos": True, "echo": True,
            "stream_options": {"include_usage": True}}
    full = post(client, **body)
    *chunks, last = stream(client, body)
    scored = score(client, PROMPTS[1], logprobs=3)["choices"][0]
    first = chunks[0]["choices"][0]
    assert (first["text"], first["logprobs"], first["finish_reason"]) == (PROMPTS[1], scored["logprobs"], None)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    joined = {key: [v for c in chunks for v in c["choices"][0]["logprobs"][key]] for key in keys}
    assert_same_logprobs(joined, full["choices"][0]["logprobs"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and counts(last["usage"]) == counts(full["usage"])


def test_echo_stream_with_max_tokens_zero_is_one_chunk(client):
    body = {"prompt": PROMPTS[0], "max_tokens": 0, "logprobs": 1, "echo": True,
            "stream_options": {"include_usage": True}}
    chunk, last = stream(client, body)
    assert chunk["choices"][0]["text"] == PROMPTS[0] and chunk["choices"][0]["finish_reason"] == "length"
    assert chunk["choices"][0]["logprobs"] == score(client, PROMPTS[0], logprobs=1)["choices"][0]["logprobs"]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 0


BAD_REQUESTS = [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "0 is allowed only with echo=true", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": False, "logprobs": 1},
     "0 is allowed only with echo=true", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1, "echo": True}, "max_tokens must be at least 1",
     "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": True, "logprobs": 21},
     "logprobs must be in [0, 20]", "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": True, "logprobs": -1},
     "logprobs must be in [0, 20]", "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": True, "stream": True, "logprobs": 21},
     "logprobs must be in [0, 20]", "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": True, "temperature": -1},
     "temperature must be >= 0", "temperature"),
    ("/v1/completions", {"prompt": "hi", "echo": "yes"}, "'echo'", "echo"),
    ("/v1/completions", {"prompt": [5] * (CONTEXT + 1), "max_tokens": 0, "echo": True, "logprobs": 1},
     f"maximum context length is {CONTEXT}", "max_tokens"),
    ("/v1/completions", {"prompt": [5] * CONTEXT, "max_tokens": 1, "echo": True, "logprobs": 1},
     f"maximum context length is {CONTEXT}", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "echo": True}, "Chat completions do not take echo", "echo"),
]


@pytest.mark.parametrize(("path", "body", "message", "param"), BAD_REQUESTS)
def test_bad_scoring_request_gets_an_openai_error(client, path, body, message, param):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_a_whole_context_prompt_is_scored(client, server):
    ids = [5, 17, 42, 99] * (CONTEXT // 4)
    lp = score(client, ids, logprobs=1)["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == CONTEXT and lp["token_logprobs"][0] is None


def test_chat_accepts_echo_false(client):
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "echo": False, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_scoring_while_other_requests_stream(client, server):
    alone = {p: score(client, p)["choices"][0]["logprobs"] for p in PROMPTS}
    body = {"prompt": "Continuous batching", "max_tokens": 200, "ignore_eos": True}
    expected = post(client, **body)["choices"][0]["text"]

    async def streamed(c: httpx.AsyncClient, decoding: asyncio.Event) -> tuple[str, float]:
        text = ""
        async with c.stream("POST", "/v1/completions", json={**body, "temperature": 0, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line.removeprefix("data: "))["choices"][0]["text"]
                    decoding.set()
        return text, time.monotonic()

    async def scored(c: httpx.AsyncClient, prompt: str) -> tuple[dict, float]:
        r = await c.post("/v1/completions", json={"prompt": prompt, "echo": True, "logprobs": 5, "max_tokens": 0})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["logprobs"], time.monotonic()

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            decoding = [asyncio.Event() for _ in range(3)]
            streams = [asyncio.create_task(streamed(c, event)) for event in decoding]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in decoding)), 30)
            scores = await asyncio.gather(*(scored(c, p) for p in PROMPTS))
            return await asyncio.gather(*streams), scores

    streams, scores = asyncio.run(main())
    assert [text for text, _ in streams] == [expected] * 3
    assert [lp for lp, _ in scores] == [alone[p] for p in PROMPTS]
    assert max(t for _, t in scores) < min(t for _, t in streams), "scoring waited for the streams to end"
    assert server.engine.is_running


def test_scoring_needs_a_running_loop(server):
    idle = AsyncEngine(server.engine.engine)  # never started: nothing would run the command
    with pytest.raises(EngineDeadError, match="not running"):
        asyncio.run(idle.prompt_logprobs([1, 2, 3], 1))


def test_tokenize_gives_the_ids_the_engine_uses_for_prompts_answers_and_chat(server, client):
    engine = server.engine.engine
    text = PROMPTS[0]
    got = client.post("/tokenize", json={"model": MODEL, "prompt": text}).json()
    assert got == {"count": len(engine.tokenize(text)), "max_model_len": CONTEXT, "tokens": engine.tokenize(text)}
    bare = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert bare == engine.tokenizer.encode(text, add_special_tokens=False)
    chat = client.post("/tokenize", json={"messages": CHAT}).json()["tokens"]
    assert chat == engine.chat_prompt_ids(CHAT)
    open_turn = client.post("/tokenize", json={"messages": CHAT, "add_generation_prompt": False}).json()["tokens"]
    assert chat[: len(open_turn)] == open_turn and len(open_turn) < len(chat)
    assert client.post("/tokenize", json={"prompt": ""}).json()["tokens"] == []
    # The ids that /tokenize gives score as the same prompt does.
    assert_same_logprobs(score(client, chat)["choices"][0]["logprobs"],
                         score(client, chat)["choices"][0]["logprobs"])


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompt": "hi", "messages": CHAT}, 400, "exactly one of 'prompt'"),
    ({}, 400, "exactly one of 'prompt'"),
    ({"prompt": [10 ** 9]}, 400, "token ids out of range"),
    ({"prompt": "hi", "model": "other"}, 404, "does not exist"),
])
def test_bad_tokenize_request_gets_an_openai_error(client, body, status, message):
    r = client.post("/tokenize", json=body)
    assert r.status_code == status and message in r.json()["error"]["message"], r.text
