"""Output text: incremental detokenization, stop strings and tokens, finish reasons, and the engine's
request validation errors. SmolLM2's byte-level tokenizer splits CJK and emoji across tokens."""

from __future__ import annotations

import pytest

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.detokenizer import IncrementalDetokenizer
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.sampling import SamplingParams

MIXED = "日本語のテキスト 😀🎉 naïve café 你好世界 👍🏽 done."
PROMPT = "Write a paragraph about international cooperation and telecommunications infrastructure:"


@pytest.fixture(scope="module")
def engine(smollm2_path) -> LLMEngine:
    # One intra-op thread: 2 shared cores, and oversubscribed OpenMP threads slow each step ~10x.
    return LLMEngine(EngineConfig(model=str(smollm2_path), dtype="float32", num_threads=1))


@pytest.fixture(scope="module")
def tokenizer(engine):
    return engine.tokenizer


def stream(engine: LLMEngine, prompt, params: SamplingParams, request_id: str = "s"):
    """Run one request through step(); returns (deltas, last output)."""
    engine.add_request(request_id, prompt, params)
    deltas, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.output.delta_text)
            last = out
    return deltas, last


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def reference(engine):
    """The greedy continuation of PROMPT without stop conditions: (text, token ids)."""
    out = engine.generate([PROMPT], greedy(40))[0]
    return out.output.text, out.output.token_ids


# -- the incremental detokenizer ----------------------------------------------------------------
@pytest.mark.parametrize("text", [MIXED, "def f(x):\n    return x  # ok\n", " leading space and\ttabs"])
def test_incremental_deltas_concatenate_to_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say:"))
    deltas = [detok.add(t) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert detok.text == text


def test_a_character_split_across_tokens_is_never_emitted_half(tokenizer):
    ids = tokenizer.encode(MIXED)
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids), "the text no longer splits characters"
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say:"))
    deltas = [detok.add(t) for t in ids]
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) + detok.flush() == MIXED


def test_special_tokens_are_left_out_of_the_text(tokenizer):
    ids = tokenizer.encode("Hi") + [tokenizer.eos_token_id] + tokenizer.encode(" there")
    detok = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id])
    text = "".join(detok.add(t) for t in ids) + detok.flush()
    assert text == "Hi there"


# -- stop conditions through the engine ---------------------------------------------------------
def boundary_stop(tokenizer, token_ids: list[int], text: str, min_token_chars: int) -> tuple[str, int]:
    """A stop string across a token boundary: the last char of one token and the start of the next,
    which has at least min_token_chars characters. Returns it and where it first occurs in text."""
    pieces = [tokenizer.decode([t]) for t in token_ids]
    assert "".join(pieces) == text
    start = 0
    for prev, piece in zip(pieces, pieces[1:], strict=False):
        start += len(prev)
        stop = prev[-1:] + piece[:2]
        if start >= 8 and len(piece) >= min_token_chars and text.find(stop) == start - 1:
            return stop, start - 1
    raise AssertionError("no suitable token boundary in the reference text")


def test_stop_string_trims_the_output_and_finishes_with_stop(engine, reference):
    text, ids = reference
    stop, at = boundary_stop(engine.tokenizer, ids, text, min_token_chars=3)
    deltas, out = stream(engine, PROMPT, greedy(40, stop=[stop]))
    assert out.finished and out.output.finish_reason == "stop"
    assert out.output.text == text[:at]
    # Streamed text never runs ahead of the final (trimmed) text: no piece of the stop string leaks.
    assert "".join(deltas) == text[:at]


def test_stop_string_kept_when_asked(engine, reference):
    text, ids = reference
    stop, at = boundary_stop(engine.tokenizer, ids, text, min_token_chars=3)
    deltas, out = stream(
        engine, PROMPT, greedy(40, stop=["never appears", stop], include_stop_str_in_output=True)
    )
    assert out.output.finish_reason == "stop"
    assert out.output.text == "".join(deltas) == text[: at + len(stop)]


def test_stop_string_ending_inside_a_long_token_is_found(engine, reference):
    # A token of 10+ characters completes a stop string that began in the previous token.
    text, ids = reference
    stop, at = boundary_stop(engine.tokenizer, ids, text, min_token_chars=11)
    deltas, out = stream(engine, PROMPT, greedy(40, stop=[stop]))
    assert out.output.finish_reason == "stop"
    assert out.output.text == "".join(deltas) == text[:at]


def test_held_back_text_is_released_when_the_request_ends_by_length(engine, reference):
    text, _ = reference
    deltas, out = stream(engine, PROMPT, greedy(40, stop=["this string never appears"]))
    assert out.output.finish_reason == "length"
    assert out.output.text == "".join(deltas) == text


def test_every_streamed_prefix_is_a_prefix_of_the_final_text(engine):
    deltas, out = stream(engine, "List three fruits:", greedy(30, stop=["\n\n", "4."]))
    acc = ""
    for d in deltas:
        acc += d
        assert out.output.text.startswith(acc)
    assert acc == out.output.text


def test_stop_token_id_finishes_with_stop_and_keeps_its_text_out(engine, reference):
    text, ids = reference
    k = next(i for i in range(5, len(ids)) if ids[i] not in ids[:i])
    out = engine.generate([PROMPT], greedy(40, stop_token_ids=[ids[k]]))[0]
    assert out.output.finish_reason == "stop"
    assert out.output.token_ids == ids[: k + 1]
    assert out.output.text == engine.tokenizer.decode(ids[:k])


def test_eos_finishes_with_stop_unless_ignored(engine):
    # SmolLM2 ends this answer with <|im_end|> within 32 tokens.
    eos = engine.tokenizer.eos_token_id
    stopped = engine.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=32))[0]
    assert stopped.output.finish_reason == "stop"
    assert stopped.output.token_ids[-1] == eos and len(stopped.output.token_ids) < 32
    assert engine.tokenizer.eos_token not in stopped.output.text

    ignored = engine.generate(["The capital of France is"], greedy(32))[0]
    assert ignored.output.finish_reason == "length" and len(ignored.output.token_ids) == 32
    assert ignored.output.token_ids[: len(stopped.output.token_ids)] == stopped.output.token_ids


def test_max_tokens_finishes_with_length(engine, reference):
    text, ids = reference
    deltas, out = stream(engine, PROMPT, greedy(7))
    assert out.output.finish_reason == "length"
    assert out.output.token_ids == ids[:7]
    assert out.output.text == "".join(deltas) == engine.tokenizer.decode(ids[:7])
    assert len(deltas) == 7


# -- request validation -------------------------------------------------------------------------
def test_prompt_plus_max_tokens_beyond_the_context_is_rejected_naming_the_limit(engine):
    limit = engine.info.max_model_len
    with pytest.raises(InvalidRequest, match=str(limit)) as exc:
        engine.add_request("long", [100] * (limit - 5), SamplingParams(max_tokens=10))
    assert "max_tokens" in str(exc.value)
    engine.add_request("fits", [100] * (limit - 10), SamplingParams(max_tokens=10))  # exactly at the limit
    engine.abort("fits")
    assert not engine.has_unfinished()


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt_is_rejected(engine, prompt):
    with pytest.raises(InvalidRequest, match="empty"):
        engine.add_request("empty", prompt, SamplingParams())
    assert not engine.has_unfinished()


@pytest.mark.parametrize("bad", [-1, 49152, 10**9])
def test_token_ids_out_of_range_are_rejected(engine, bad):
    assert engine.info.vocab_size == 49152
    with pytest.raises(InvalidRequest, match="out of range"):
        engine.add_request("oob", [1, 2, bad], SamplingParams())
    assert not engine.has_unfinished()


def test_duplicate_request_id_is_rejected_and_the_first_request_is_unharmed(engine):
    engine.add_request("dup", "Hello", greedy(3))
    with pytest.raises(InvalidRequest, match="dup"):
        engine.add_request("dup", "Other", greedy(3))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert [o.request_id for o in outs] == ["dup"] * 3 and outs[-1].finished
    engine.add_request("dup", "Hello", greedy(1))  # the id is free again once finished
    while engine.has_unfinished():
        engine.step()


@pytest.mark.parametrize(
    "kw", [dict(temperature=-1), dict(top_p=0), dict(min_p=1.5), dict(max_tokens=0), dict(top_k=-2)]
)
def test_bad_sampling_params_are_rejected(kw):
    with pytest.raises(InvalidRequest):
        SamplingParams(**kw)


def test_request_larger_than_the_kv_pool_is_rejected(tiny_llama):
    small = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_kv_blocks=4, block_size=16))
    with pytest.raises(InvalidRequest, match="KV blocks"):
        small.add_request("big", list(range(3, 60)), SamplingParams(max_tokens=16))
    small.add_request("ok", list(range(3, 40)), SamplingParams(max_tokens=16, temperature=0))
    while small.has_unfinished():
        small.step()


def test_whole_prompt_beyond_the_token_budget_is_rejected_without_chunked_prefill(tiny_llama):
    config = EngineConfig(
        model=str(tiny_llama), dtype="float32", enable_chunked_prefill=False, max_num_batched_tokens=32
    )
    with pytest.raises(InvalidRequest, match="32"):
        LLMEngine(config).add_request("big", list(range(3, 40)), SamplingParams())
