"""The engine against transformers on SmolLM2-135M: greedy tokens and logits, float32 and bfloat16.

Both sides tokenize with the engine's tokenizer. The engine's logits come from `logits_observer`;
transformers' from a teacher-forced forward over prompt + the engine's generated tokens, so every
generated position is compared on identical inputs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmctl.agent.engine.config import EngineConfig
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.engine.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In machine learning, a neural network",
    "The quick brown fox",
    "My favourite recipe for pancakes starts with",
]
NEW_TOKENS = 32


def load_hf(path, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def run_engine(path, dtype: str) -> tuple[LLMEngine, list[list[int]], list[torch.Tensor]]:
    """All prompts in one batch. Returns the engine, generated ids and logits [NEW_TOKENS, vocab] per prompt."""
    # One intra-op thread: 2 shared cores, and oversubscribed OpenMP threads slow each step ~10x.
    engine = LLMEngine(EngineConfig(model=str(path), dtype=dtype, num_threads=1))
    rows: dict[str, list[torch.Tensor]] = {}

    def observe(request_ids, logits):
        for rid, row in zip(request_ids, logits, strict=True):
            rows.setdefault(rid, []).append(row.clone())

    engine.logits_observer = observe
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            final[out.request_id] = out
    ids = [final[str(i)].output.token_ids for i in range(len(PROMPTS))]
    logits = [torch.stack(rows[str(i)]) for i in range(len(PROMPTS))]
    return engine, ids, logits


@torch.no_grad()
def teacher_forced(model, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """float32 logits [len(generated), vocab] predicting each generated token."""
    logits = model(torch.tensor([prompt_ids + generated])).logits[0].float()
    return logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(generated)]


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b|| / ||b|| per row."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1)


@pytest.fixture(scope="module")
def hf_fp32(smollm2_path):
    return load_hf(smollm2_path, torch.float32)


@pytest.fixture(scope="module")
def fp32_run(smollm2_path):
    return run_engine(smollm2_path, "float32")


def test_greedy_tokens_match_transformers_in_float32(fp32_run, hf_fp32):
    engine, generated, _ = fp32_run
    for prompt, ours in zip(PROMPTS, generated, strict=True):
        ids = engine.tokenizer.encode(prompt)
        # ignore_eos keeps generating through EOS, while min_new_tokens alone would mask EOS's logit:
        # eos_token_id=[] makes transformers decode the unmasked argmax too (prompt 0 emits EOS).
        with torch.no_grad():
            theirs = hf_fp32.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                min_new_tokens=NEW_TOKENS,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=[],
                pad_token_id=engine.tokenizer.pad_token_id or 0,
            )[0, len(ids) :].tolist()
        assert ours == theirs, prompt


def test_logits_match_transformers_within_1e4_in_float32(fp32_run, hf_fp32):
    engine, generated, logits = fp32_run
    for prompt, ours, rows in zip(PROMPTS, generated, logits, strict=True):
        assert rows.shape == (NEW_TOKENS, engine.info.vocab_size)
        reference = teacher_forced(hf_fp32, engine.tokenizer.encode(prompt), ours)
        worst = relative_errors(rows, reference).max().item()
        assert worst <= 1e-4, f"{prompt!r}: relative logits error {worst:.2e}"


def test_bfloat16_logits_are_as_close_to_float32_as_transformers_bfloat16(smollm2_path, hf_fp32):
    engine, generated, logits = run_engine(smollm2_path, "bfloat16")
    assert engine.info.dtype == "bfloat16"
    hf_bf16 = load_hf(smollm2_path, torch.bfloat16)
    ours, theirs = [], []
    for prompt, tokens, rows in zip(PROMPTS, generated, logits, strict=True):
        ids = engine.tokenizer.encode(prompt)
        exact = teacher_forced(hf_fp32, ids, tokens)
        ours.append(relative_errors(rows, exact))
        theirs.append(relative_errors(teacher_forced(hf_bf16, ids, tokens), exact))
    ours_all, theirs_all = torch.cat(ours), torch.cat(theirs)
    first = torch.stack([e[0] for e in ours]), torch.stack([e[0] for e in theirs])
    # bf16 keeps 8 mantissa bits and rounding differences compound over 30 layers, so single positions are
    # chaotic: which kernel rounds where moves one position's error from 8% to 20% and another's the other
    # way (measured on a Zen 4 box: 256 positions, ours vs float32 mean 2.5%, p95 6.0%, max 20.5%;
    # transformers' bf16 mean 2.3%, p95 5.7%, max 13.0%; swapping any one of our kernels for the torch
    # reference moved our max between 7.6% and 20.5% at the same mean). So the distributions are compared:
    # ours must be about as close to float32 as transformers' own bf16, and no position wildly off (a
    # broken kernel is off by 100%).
    def p95(x):
        return x.quantile(0.95).item()

    assert ours_all.mean() <= 1.25 * theirs_all.mean(), (ours_all.mean(), theirs_all.mean())
    assert p95(ours_all) <= 1.25 * p95(theirs_all), (p95(ours_all), p95(theirs_all))
    assert first[0].mean() <= 1.5 * first[1].mean(), first  # one forward over the prompt, nothing compounded
    assert ours_all.max() <= 0.35, ours_all.max()
