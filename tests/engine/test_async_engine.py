"""AsyncEngine on SmolLM2: concurrent streams, early exit aborts and frees KV blocks, errors reach
the caller. Each test runs its own event loop; the engine's loop thread lives for the module."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmctl.agent.engine.async_engine import AsyncEngine
from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "A haiku about autumn:",
    "def greet(name):",
    "Three tips for sleeping well:",
]
PARAMS = [
    SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=14, stop=["\n\n"]),
]
TIMEOUT = 30.0
"""Seconds an async scenario may take before it counts as hung (each takes a few seconds at most)."""


def config(path) -> EngineConfig:
    # One intra-op thread: 2 shared cores, and oversubscribed OpenMP threads slow each step ~10x.
    return EngineConfig(model=str(path), dtype="float32", num_threads=1)


@pytest.fixture(scope="module")
def aengine(smollm2_path):
    aeng = AsyncEngine.from_config(config(smollm2_path))
    asyncio.run(aeng.start())
    yield aeng
    asyncio.run(aeng.stop())


def run(coro, timeout: float = TIMEOUT):
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    except TimeoutError:
        raise AssertionError(f"hung: not done after {timeout} s") from None


async def collect(aeng: AsyncEngine, request_id, prompt, params) -> list:
    return [out async for out in aeng.generate(request_id, prompt, params)]


async def until_idle(aeng: AsyncEngine, timeout: float = 5.0):
    """Wait until the engine holds no request and no KV block; returns its stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = aeng.stats()
        if (stats.num_running, stats.num_waiting, stats.num_used_blocks) == (0, 0, 0):
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


def test_concurrent_streams_give_the_same_texts_as_generate(smollm2_path, aengine):
    expected = LLMEngine(config(smollm2_path)).generate(PROMPTS, PARAMS)

    async def main():
        return await asyncio.gather(
            *(collect(aengine, f"c{i}", p, sp) for i, (p, sp) in enumerate(zip(PROMPTS, PARAMS, strict=True)))
        )

    streams = run(main())
    for outs, ref in zip(streams, expected, strict=True):
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        final = outs[-1].output
        assert final.text == ref.output.text
        assert final.token_ids == ref.output.token_ids
        assert final.finish_reason == ref.output.finish_reason
        assert "".join(o.output.delta_text for o in outs) == final.text
        assert [t for o in outs for t in o.output.delta_token_ids] == final.token_ids


def test_breaking_out_of_the_stream_aborts_the_request_and_frees_its_blocks(aengine):
    before = aengine.stats().num_generation_tokens

    async def main():
        seen = 0
        async for out in aengine.generate(
            "early",
            "Tell me a long story about a dragon.",
            SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
        ):
            seen += 1
            assert not out.finished
            if seen == 3:
                assert aengine.stats().num_used_blocks > 0
                break
        return await until_idle(aengine)

    stats = run(main())
    assert (stats.num_running, stats.num_waiting, stats.num_used_blocks) == (0, 0, 0)
    assert stats.num_generation_tokens - before < 400


def test_cancelling_the_consumer_aborts_the_request(aengine):
    async def main():
        first = asyncio.Event()

        async def consume():
            params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
            async for _ in aengine.generate("cancelled", "Write an essay on rivers.", params):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await until_idle(aengine)

    stats = run(main())
    assert (stats.num_running, stats.num_waiting, stats.num_used_blocks) == (0, 0, 0)


@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ("", SamplingParams(), "empty"),
        ([1, 2, 10**9], SamplingParams(), "out of range"),
        ("Hi", SamplingParams(max_tokens=10**6), "maximum context length"),
    ],
)
def test_invalid_requests_raise_in_the_caller_and_the_engine_keeps_serving(aengine, prompt, params, match):
    async def main():
        with pytest.raises(InvalidRequest, match=match):
            await collect(aengine, None, prompt, params)
        return await collect(aengine, None, "Hello", SamplingParams(temperature=0, max_tokens=3))

    outs = run(main())
    assert outs[-1].finished and len(outs[-1].output.token_ids) == 3


def test_a_duplicate_request_id_is_rejected_without_disturbing_the_first_stream(aengine):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    async def main():
        first = asyncio.create_task(collect(aengine, "same-id", "The sky is", params))
        await asyncio.sleep(0)  # let the first stream register before the second arrives
        with pytest.raises(InvalidRequest, match="same-id"):
            await collect(aengine, "same-id", "Hello there", params)
        return await first

    outs = run(main(), timeout=15)
    assert outs[-1].finished and len(outs[-1].output.token_ids) == 8
