"""The OpenAI-compatible server, end to end: a real uvicorn on a loopback port over a tiny random Llama."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import make_tiny_llama

MODEL = "tiny"
CONTEXT = 4096  # long enough that a max-length request outlives a client disconnect by seconds
CHAT = [{"role": "user", "content": "Hello world!"}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-4k"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def server(model_path: Path):
    import uvicorn

    from llmctl.agent.engine.async_engine import AsyncEngine
    from llmctl.agent.engine.config import EngineConfig
    from llmctl.agent.server import build_app

    config = EngineConfig(model=str(model_path), dtype="float32", max_model_len=CONTEXT, num_kv_blocks=1024)
    engine = AsyncEngine.from_config(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(build_app(engine, MODEL), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", engine=engine)
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()
    assert not engine.is_running, "shutting the app down must stop the engine loop"


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def complete(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(client: httpx.Client, path: str, body: dict) -> list[dict]:
    """The SSE payloads of one streaming request; asserts the [DONE] terminator and the framing."""
    with client.stream("POST", path, json={"model": MODEL, "temperature": 0, **body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


def metric_values(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_models_lists_the_served_model(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in data["data"]] == [(MODEL, "model", CONTEXT)]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert client.get("/v1/models/other").status_code == 404


def test_health_is_ok_while_the_engine_runs(client):
    r = client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_completion_has_openai_shape_and_exact_usage(client, server):
    data = complete(client, prompt="The quick brown fox", max_tokens=7, ignore_eos=True)
    assert data["object"] == "text_completion" and data["model"] == MODEL and data["id"].startswith("cmpl-")
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    prompt_len = len(server.engine.engine.tokenize("The quick brown fox"))
    assert data["usage"]["prompt_tokens"] == prompt_len
    assert data["usage"]["completion_tokens"] == 7
    assert data["usage"]["total_tokens"] == prompt_len + 7


def test_completion_defaults_to_16_tokens(client):
    data = complete(client, prompt="Hello", ignore_eos=True)
    assert data["usage"]["completion_tokens"] == 16


def test_completion_accepts_token_ids_and_a_single_prompt_list(client, server):
    ids = server.engine.engine.tokenize("Paged attention")
    by_ids = complete(client, prompt=ids, max_tokens=5)
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    assert complete(client, prompt=[ids], max_tokens=5)["choices"] == by_ids["choices"]
    assert complete(client, prompt=["Paged attention"], max_tokens=5)["choices"] == by_ids["choices"]


def test_completion_stream_concatenates_to_the_non_stream_text(client):
    body = {"prompt": "Continuous batching", "max_tokens": 12, "ignore_eos": True}
    full = complete(client, **body)
    events = stream_events(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    *chunks, last = events
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["usage"] is None for c in chunks)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 12
    assert last["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]


def test_stream_without_include_usage_has_no_usage(client):
    events = stream_events(client, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
    assert events and all("usage" not in e and len(e["choices"]) == 1 for e in events)


def test_chat_stream_matches_non_stream(client):
    body = {"messages": CHAT, "max_tokens": 10, "ignore_eos": True}
    r = client.post("/v1/chat/completions", json={"model": MODEL, "temperature": 0, **body})
    full = r.json()
    assert full["object"] == "chat.completion" and full["id"].startswith("chatcmpl-")
    message = full["choices"][0]["message"]
    assert message["role"] == "assistant" and full["choices"][0]["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 10
    events = stream_events(client, "/v1/chat/completions", body)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == message["content"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_joins_text_content_parts(client):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world!"}]
    by_parts = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                         "max_tokens": 4, "temperature": 0}).json()
    plain = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "temperature": 0})
    assert by_parts["usage"] == plain.json()["usage"]
    assert by_parts["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": image}]})
    assert r.status_code == 400 and "Only text content" in r.json()["error"]["message"]


def test_concurrent_requests_each_get_their_own_answer(server):
    async def one(c: httpx.AsyncClient, i: int) -> int:
        body = {"prompt": f"Hello {i}", "max_tokens": 3 + i, "ignore_eos": True, "stream": i % 2 == 1,
                "stream_options": {"include_usage": True}}
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 200
        if i % 2 == 0:
            return r.json()["usage"]["completion_tokens"]
        events = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n")[:-2]]
        return events[-1]["usage"]["completion_tokens"]

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(one(c, i) for i in range(6)))

    assert asyncio.run(main()) == [3 + i for i in range(6)]


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, server):
    # A long prompt leaves few tokens, so the default (CONTEXT - prompt) runs out quickly.
    words = 100
    for _ in range(3):  # token count is not linear in words (BPE merges), so refine the guess
        length = len(server.engine.engine.chat_prompt_ids([{"role": "user", "content": "fox " * words}]))
        words = int(words * (CONTEXT - 30) / length)
    content = "fox " * words
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                  "ignore_eos": True, "temperature": 0})
    data = r.json()
    assert r.status_code == 200, data
    assert data["usage"]["total_tokens"] == CONTEXT
    assert 0 < data["usage"]["completion_tokens"] < 100
    assert data["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_text_before_it(client):
    text = complete(client, prompt="Hello world", max_tokens=24, ignore_eos=True)["choices"][0]["text"]
    k = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[k : k + 2]
    body = {"prompt": "Hello world", "max_tokens": 24, "ignore_eos": True, "stop": ["never-seen", stop]}
    choice = complete(client, **body)["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (text[: text.index(stop)], "stop")
    streamed = stream_events(client, "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for e in streamed) == choice["text"]
    assert complete(client, **{**body, "stop": stop})["choices"][0]["text"] == choice["text"]


def test_logprobs_come_with_every_token(client):
    data = complete(client, prompt="Hello", max_tokens=5, logprobs=2)
    lp = data["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == data["choices"][0]["text"]
    assert all(v <= 0 for v in lp["token_logprobs"])
    # Top entries are keyed by text (OpenAI's format), so alternatives that decode alike collapse.
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert top[token] == logprob and 1 <= len(top) <= 3
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "logprobs": True,
                                                  "top_logprobs": 3, "ignore_eos": True})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 and all(len(c["top_logprobs"]) == 3 and c["logprob"] <= 0 for c in content)


def test_seed_makes_sampling_reproducible(client):
    body = {"prompt": "Hello", "max_tokens": 12, "temperature": 1.0, "seed": 1234, "ignore_eos": True}
    assert complete(client, **body)["choices"][0]["text"] == complete(client, **body)["choices"][0]["text"]


def test_official_openai_client_parses_every_response(server):
    import openai

    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    assert [m.id for m in oai.models.list().data] == [MODEL]
    comp = oai.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=1)
    assert comp.usage.completion_tokens == 4 and comp.choices[0].logprobs.token_logprobs
    chat = oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 6
    chunks = list(oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0,
                                              stream=True, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        oai.completions.create(model=MODEL, prompt="Hello", max_tokens=CONTEXT)


BAD_REQUESTS = [
    ("/v1/completions", {"prompt": "hi", "max_tokens": "5"}, 400, "'max_tokens'", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens must be at least 1", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -0.5}, 400, "temperature must be >= 0", "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p must be in (0, 1]", "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p must be in (0, 1]", "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n=1", "n"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "Batched prompts", "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": CONTEXT}, 400, f"maximum context length is {CONTEXT}",
     "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10, "stream": True, "logprobs": 21}, 400,
     "logprobs must be in [0, 20]", "logprobs"),
    ("/v1/completions", {"prompt": [10**6]}, 400, "out of range", None),
    ("/v1/completions", {"prompt": ""}, 400, "empty", None),
    ("/v1/completions", {"max_tokens": 3}, 400, "'prompt': Field required", "prompt"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "'stream'", "stream"),
    ("/v1/completions", {"prompt": "hi", "stop": ["ok", ""]}, 400, "Stop strings must not be empty", "stop"),
    ("/v1/completions", {"prompt": "hi", "model": "nope"}, 404, "'nope' does not exist", "model"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "'messages'", "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "'messages.0.role'", "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 3}, 400, "n=1", "n"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": CONTEXT}, 400,
     "maximum context length", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "requires logprobs", "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "nope", "stream": True}, 404, "does not exist", "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "message", "param"), BAD_REQUESTS)
def test_bad_request_gets_an_openai_error(client, path, body, status, message, param):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"]
    assert error["param"] == param
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_malformed_json_is_a_400_not_a_422(client):
    r = client.post("/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]["message"]


def test_unknown_route_gets_an_error_body(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"


def wait_until_idle(server, timeout: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        stats = server.engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.num_used_blocks == 0:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"request still holds the engine {timeout}s after its client left: {stats}")


def test_client_disconnect_aborts_a_streaming_request(client, server):
    before = metric_values(client)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": CONTEXT - 100, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert server.engine.stats().num_running == 1
    wait_until_idle(server)
    after = metric_values(client)
    assert after[("llmctl_requests_finished_total", (("finished_reason", "abort"),))] == before.get(
        ("llmctl_requests_finished_total", (("finished_reason", "abort"),)), 0) + 1
    generated = after[("llmctl_generation_tokens_total", ())] - before[("llmctl_generation_tokens_total", ())]
    assert generated < CONTEXT - 100


def test_client_disconnect_aborts_a_non_streaming_request(client, server):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": CONTEXT - 100, "ignore_eos": True}
    generated_before = server.engine.stats().num_generation_tokens
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.5) as c:
        c.post("/v1/completions", json=body)
    wait_until_idle(server)
    assert server.engine.stats().num_generation_tokens - generated_before < CONTEXT - 100


def test_metrics_count_requests(client):
    before = metric_values(client)
    data = complete(client, prompt="Prefix caching", max_tokens=5, ignore_eos=True)
    after = metric_values(client)
    for name in ("llmctl_num_requests_running", "llmctl_num_requests_waiting", "llmctl_kv_cache_usage",
                 "llmctl_prefix_cache_hit_rate", "llmctl_kv_blocks_total", "llmctl_num_preemptions_total"):
        assert (name, ()) in after, name
    assert after[("llmctl_kv_blocks_total", ())] == 1024

    def delta(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0)

    assert delta("llmctl_prompt_tokens_total") == data["usage"]["prompt_tokens"]
    assert delta("llmctl_generation_tokens_total") == 5
    assert delta("llmctl_requests_finished_total", (("finished_reason", "length"),)) == 1
    for hist in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert delta(f"llmctl_{hist}_count") == 1, hist


def test_llmctl_serve_runs_until_interrupted(model_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llmctl = Path(sys.executable).with_name("llmctl")
    proc = subprocess.Popen(
        [str(llmctl), "serve", str(model_path), "--port", str(port), "--dtype", "float32",
         "--max-model-len", "256", "--served-model-name", "mini", "--max-body-bytes", "4096", "--read-timeout-s", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "llmctl serve did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": "mini", "prompt": "Hello", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        # The hostile-input limits reach the real process (their behaviour: test_server_hostile_input.py).
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "mini", "prompt": "x" * 5000})
        assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}/v1" in output
